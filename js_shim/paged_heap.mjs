// @ts-check
/**
 * The site's Pyodide memory snapshot as it is shipped: only the heap's pages that hold
 * something, with a map of which (a "paged heap"), gzipped by the build.
 *
 * Why: a first visit downloads and gunzips the snapshot before Pyodide can start
 * (`prepareSnapshot` awaits the whole heap), so its inflate is on the path to readable.
 * Of the 31 MB heap, over half is 4 KiB pages of zeros; gzip stores them in a few bytes,
 * but `DecompressionStream` still produces and `Response.arrayBuffer()` still copies every
 * one of them. Here they are never produced: the decoder writes each page that arrives
 * straight to its place in a zeroed heap (measured under Node: ~80-150 ms instead of
 * ~160-370 ms for the plain gzip of this heap, on a busy 2-core machine).
 *
 * Layout (little-endian): "TSHP", u32 format (1), u32 page size, u32 heap length, then a
 * bitmap of ceil(length / page size) bits (bit i of byte i >> 3, lowest first: page i is
 * stored), then the stored pages in order, each `min(page size, length - i * page size)`
 * bytes. Written by `build/make_snapshot.mjs` at build time, read by `boot.mjs`.
 */

const MAGIC = 0x50485354; // "TSHP" read as a little-endian u32
const FORMAT = 1;
const HEADER = 16;

/**
 * Encode `heap` as a paged heap (not compressed: the build gzips it).
 * @param {Uint8Array} heap
 * @param {number} [pageSize]
 * @returns {Uint8Array}
 */
export function pageHeap(heap, pageSize = 4096) {
  const pages = Math.ceil(heap.length / pageSize);
  const map = new Uint8Array(Math.ceil(pages / 8));
  /** @type {Uint8Array[]} */
  const stored = [];
  let size = HEADER + map.length;
  for (let i = 0; i < pages; i++) {
    const page = heap.subarray(i * pageSize, Math.min(heap.length, (i + 1) * pageSize));
    if (page.some((b) => b !== 0)) {
      map[i >> 3] |= 1 << (i & 7);
      stored.push(page);
      size += page.length;
    }
  }
  const out = new Uint8Array(size);
  const head = new DataView(out.buffer);
  head.setUint32(0, MAGIC, true);
  head.setUint32(4, FORMAT, true);
  head.setUint32(8, pageSize, true);
  head.setUint32(12, heap.length, true);
  out.set(map, HEADER);
  let at = HEADER + map.length;
  for (const page of stored) {
    out.set(page, at);
    at += page.length;
  }
  return out;
}

/**
 * Decode a paged heap as it streams in (already gunzipped), into a new heap of `length`
 * bytes. Rejects anything that is not exactly one paged heap of that length: another
 * format, a header or page map cut short, missing pages or bytes past the last page (a
 * heap that is not whole would boot a broken Python).
 * @param {ReadableStream<Uint8Array>} stream
 * @param {number} length the heap's length, as the manifest records it
 * @returns {Promise<Uint8Array>}
 */
export async function readPagedHeap(stream, length) {
  const reader = stream.getReader();
  let head = new Uint8Array(0);
  /** @type {Uint8Array|null} */
  let heap = null;
  /** @type {number[]} the offset in the heap of each stored page, in order */
  const starts = [];
  let pageSize = 0;
  let page = 0; // index into starts of the page being filled
  let filled = 0; // bytes of it written so far
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    let chunk = value;
    if (!heap) {
      const joined = new Uint8Array(head.length + chunk.length);
      joined.set(head);
      joined.set(chunk, head.length);
      head = joined;
      if (head.length < HEADER) continue;
      const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
      if (view.getUint32(0, true) !== MAGIC || view.getUint32(4, true) !== FORMAT) {
        throw new Error("paged heap: not a paged heap of format 1");
      }
      pageSize = view.getUint32(8, true);
      if (pageSize === 0) throw new Error("paged heap: a page size of 0");
      if (view.getUint32(12, true) !== length) {
        throw new Error(`paged heap: ${view.getUint32(12, true)} bytes of heap, expected ${length}`);
      }
      const pages = Math.ceil(length / pageSize);
      const mapEnd = HEADER + Math.ceil(pages / 8);
      if (head.length < mapEnd) continue;
      for (let i = 0; i < pages; i++) {
        if (head[HEADER + (i >> 3)] & (1 << (i & 7))) starts.push(i * pageSize);
      }
      heap = new Uint8Array(length);
      chunk = head.subarray(mapEnd);
      head = new Uint8Array(0);
    }
    let pos = 0;
    while (pos < chunk.length) {
      if (page >= starts.length) throw new Error("paged heap: bytes past its last page");
      const start = starts[page];
      const size = Math.min(pageSize, length - start);
      const n = Math.min(size - filled, chunk.length - pos);
      heap.set(chunk.subarray(pos, pos + n), start + filled);
      pos += n;
      filled += n;
      if (filled === size) {
        page += 1;
        filled = 0;
      }
    }
  }
  if (!heap || page !== starts.length) throw new Error("paged heap: cut short");
  return heap;
}
