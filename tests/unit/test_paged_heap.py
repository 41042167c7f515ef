"""js_shim/paged_heap.mjs: the format the site's Pyodide snapshot is shipped in.

Run under Node (the build's own runtime for make_snapshot.mjs, required by ``make site``):
the encoder and the streaming decoder the browser uses, fed in chunks of every size, and
every damaged input refused (a heap that is not whole would boot a broken Python).
"""

from __future__ import annotations

import pytest
from tests.helpers.node_script import run_node_script, shim_module_url

MODULE = shim_module_url("paged_heap.mjs")

SCRIPT = """
import { pageHeap, readPagedHeap } from "%s";

/** A stream of `bytes` in chunks of `size`. */
function chunks(bytes, size) {
  let at = 0;
  return new ReadableStream({
    pull(controller) {
      if (at >= bytes.length) return controller.close();
      controller.enqueue(bytes.slice(at, at + size));
      at += size;
    },
  });
}
async function outcome(promise) {
  try { return {ok: await promise}; } catch (err) { return {error: String(err.message)}; }
}
const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

// 5 pages of 64 bytes and a last partial one of 10: zero, data, zero, data, data, partial.
const PAGE = 64;
const heap = new Uint8Array(5 * PAGE + 10);
heap.fill(7, PAGE, 2 * PAGE);
heap[3 * PAGE + 5] = 1;
heap.fill(9, 4 * PAGE, 5 * PAGE);
heap[5 * PAGE + 9] = 3;
const paged = pageHeap(heap, PAGE);
const result = {encoded: paged.length, plain: heap.length, roundTrips: []};
for (const size of [1, 7, 16, 17, 64, 65, 1000]) {
  const got = await readPagedHeap(chunks(paged, size), heap.length);
  result.roundTrips.push(same(got, heap));
}
const zeros = new Uint8Array(3 * PAGE);
const pagedZeros = pageHeap(zeros, PAGE);
result.allZeros = {encoded: pagedZeros.length,
  same: same(await readPagedHeap(chunks(pagedZeros, 5), zeros.length), zeros)};
const bad = (mutate) => { const b = paged.slice(); mutate(b); return b; };
result.refused = {
  cutShort: await outcome(readPagedHeap(chunks(paged.slice(0, paged.length - 1), 8), heap.length)),
  headerOnly: await outcome(readPagedHeap(chunks(paged.slice(0, 10), 8), heap.length)),
  empty: await outcome(readPagedHeap(chunks(new Uint8Array(0), 8), heap.length)),
  trailing: await outcome(readPagedHeap(chunks(new Uint8Array([...paged, 0]), 8), heap.length)),
  otherLength: await outcome(readPagedHeap(chunks(paged, 8), heap.length + 1)),
  otherMagic: await outcome(readPagedHeap(chunks(bad((b) => { b[0] ^= 1; }), 8), heap.length)),
  otherFormat: await outcome(readPagedHeap(chunks(bad((b) => { b[4] = 2; }), 8), heap.length)),
  zeroPageSize: await outcome(readPagedHeap(
    chunks(bad((b) => { b.fill(0, 8, 12); }), 8), heap.length)),
};
console.log(JSON.stringify(result));
"""


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return run_node_script(tmp_path_factory.mktemp("paged"), SCRIPT % MODULE)  # type: ignore[no-any-return]


def test_only_pages_that_hold_something_are_stored(result: dict[str, object]) -> None:
    # header 16 + map 1 byte + 3 full pages and the partial one; the zero pages are left out
    assert result["encoded"] == 16 + 1 + 3 * 64 + 10
    assert result["allZeros"] == {"encoded": 17, "same": True}


def test_the_decoder_rebuilds_the_heap_whatever_the_chunk_sizes(
    result: dict[str, object],
) -> None:
    assert result["roundTrips"] == [True] * 7


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("cutShort", "cut short"),
        ("headerOnly", "cut short"),
        ("empty", "cut short"),
        ("trailing", "past its last page"),
        ("otherLength", "330 bytes of heap, expected 331"),
        ("otherMagic", "not a paged heap"),
        ("otherFormat", "not a paged heap"),
        ("zeroPageSize", "page size of 0"),
    ],
)
def test_a_damaged_paged_heap_is_refused(
    result: dict[str, object], case: str, message: str
) -> None:
    refused = result["refused"]
    assert isinstance(refused, dict)
    assert "ok" not in refused[case]
    assert message in refused[case]["error"]
