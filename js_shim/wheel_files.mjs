// @ts-check
/**
 * The files of a wheel whose entries are all stored (not deflated), read in JavaScript.
 *
 * Why: both workers install the tidesync wheel at every boot (the emscripten file system
 * is not in the memory snapshot). Pyodide's `unpackArchive` does it in Python (`zipfile`,
 * zlib in wasm, ~110 files), which took 30-130 ms of each worker's boot here, most of it
 * code running for the first time. The build stores the site's wheel uncompressed
 * (build/precompile.py), so installing it is copying byte ranges into the file system:
 * a few milliseconds. Every entry is checked (its CRC-32, sizes, a relative path inside
 * the target directory): the wheel crossed the network.
 */

/** @type {Uint32Array|null} */
let crcTable = null;

/** CRC-32 (the zip / gzip polynomial) of `bytes`. @param {Uint8Array} bytes */
export function crc32(bytes) {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = crcTable[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/**
 * The files of a zip archive, or null when one of its entries is compressed (the caller
 * then unpacks it another way). Throws on anything malformed: no end record, an entry
 * outside the archive, a size or CRC-32 that does not match, a path that is absolute,
 * climbs out (`..`) or is empty, a zip64 or multi-disk archive.
 * @param {Uint8Array} zip
 * @returns {{path: string, data: Uint8Array}[] | null}
 */
export function storedZipFiles(zip) {
  const view = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  const u16 = (/** @type {number} */ at) => view.getUint16(at, true);
  const u32 = (/** @type {number} */ at) => view.getUint32(at, true);
  const fail = (/** @type {string} */ why) => {
    throw new Error(`wheel: ${why}`);
  };
  // The end of central directory record: 22 bytes plus a comment of up to 64 KiB.
  let end = -1;
  for (let at = zip.length - 22; at >= Math.max(0, zip.length - 22 - 0xffff); at--) {
    if (u32(at) === 0x06054b50) {
      end = at;
      break;
    }
  }
  if (end < 0) fail("no end of central directory record");
  const count = u16(end + 10);
  if (u16(end + 4) !== 0 || u16(end + 6) !== 0 || u16(end + 8) !== count) fail("multi-disk");
  let at = u32(end + 16);
  if (count === 0xffff || at === 0xffffffff) fail("zip64 is not supported");
  const decoder = new TextDecoder("utf-8", { fatal: true });
  /** @type {{path: string, data: Uint8Array}[]} */
  const files = [];
  let compressed = false;
  for (let i = 0; i < count; i++) {
    if (at + 46 > end || u32(at) !== 0x02014b50) fail(`central directory entry ${i} is broken`);
    const method = u16(at + 10);
    const crc = u32(at + 16);
    const size = u32(at + 20);
    const plain = u32(at + 24);
    const nameLength = u16(at + 28);
    const skip = nameLength + u16(at + 30) + u16(at + 32);
    const local = u32(at + 42);
    if (at + 46 + skip > end) fail(`central directory entry ${i} is broken`);
    const path = decoder.decode(zip.subarray(at + 46, at + 46 + nameLength));
    at += 46 + skip;
    const parts = path.split("/");
    if (!path || path.startsWith("/") || path.includes("\\") || parts.includes("..") ||
        parts.includes(".")) {
      fail(`unsafe path ${JSON.stringify(path)}`);
    }
    if (path.endsWith("/")) continue; // a directory: made with the files under it
    if (method !== 0) {
      compressed = true;
      continue;
    }
    if (size !== plain) fail(`${path}: stored sizes differ`);
    if (local + 30 > zip.length || u32(local) !== 0x04034b50) fail(`${path}: no local header`);
    const start = local + 30 + u16(local + 26) + u16(local + 28);
    if (start + size > zip.length) fail(`${path}: runs past the archive`);
    const data = zip.subarray(start, start + size);
    if (crc32(data) !== crc) fail(`${path}: CRC-32 does not match`);
    files.push({ path, data });
  }
  return compressed ? null : files;
}

/**
 * Write a stored wheel's files under `dir` in Pyodide's file system; false (nothing
 * written) when the wheel has compressed entries.
 * @param {any} FS Pyodide's `pyodide.FS`
 * @param {Uint8Array} wheel
 * @param {string} dir site-packages
 * @returns {boolean}
 */
export function writeStoredWheel(FS, wheel, dir) {
  const files = storedZipFiles(wheel);
  if (!files) return false;
  const made = new Set();
  for (const { path, data } of files) {
    const slash = path.lastIndexOf("/");
    const folder = slash < 0 ? dir : `${dir}/${path.slice(0, slash)}`;
    if (!made.has(folder)) {
      FS.mkdirTree(folder);
      made.add(folder);
    }
    FS.writeFile(`${dir}/${path}`, data);
  }
  return true;
}
