#!/usr/bin/env python3
"""A/B of the page insert's CPU cost in the Changes Worker (``bench/write_path_node.mjs``).

    python bench/write_path.py [REV ...] [--rounds 5] [--n 5000]

Each REV (a git revision, or ``.`` for the working tree; default ``main .``) has its
``py_src`` exported with ``git archive`` into a temporary directory; the Node runs
alternate between the revisions (A B A B ...) so drift of the machine hits both, and
the median over rounds of each run's median handler time per insert is printed.
Needs Node and the pinned Pyodide (``build/node_modules/pyodide``, see the .mjs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NODE_SCRIPT = REPO / "bench" / "write_path_node.mjs"


def export(rev: str, into: Path) -> Path:
    """``py_src`` of ``rev`` (``.``: the working tree as it is) as a directory."""
    if rev == ".":
        return REPO / "py_src"
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "py_src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "py_src"


def run_once(src: Path, n: int) -> dict[str, float]:
    out = subprocess.run(
        ["node", str(NODE_SCRIPT), "--src", str(src), "--n", str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revs", nargs="*", default=["main", "."])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sources = {}
        for i, rev in enumerate(args.revs):
            target = Path(tmp) / str(i)
            target.mkdir()
            sources[rev] = export(rev, target)
        runs: dict[str, list[dict[str, float]]] = {rev: [] for rev in args.revs}
        for round_no in range(args.rounds):
            order = args.revs if round_no % 2 == 0 else list(reversed(args.revs))
            for rev in order:
                result = run_once(sources[rev], args.n)
                runs[rev].append(result)
                median, mean = result["handler_median_us"], result["handler_mean_us"]
                print(
                    f"round {round_no + 1} {rev:>12}: median {median:6.1f} us  mean {mean:6.1f} us"
                    f"  raw SQL {result['raw_sql_us']:5.1f} us",
                    file=sys.stderr,
                )
    for rev, results in runs.items():
        medians = [r["handler_median_us"] for r in results]
        means = [r["handler_mean_us"] for r in results]
        raw = [r["raw_sql_us"] for r in results]
        print(
            f"{rev:>12}: handler median {statistics.median(medians):6.1f} us "
            f"(runs {', '.join(f'{m:.0f}' for m in medians)}), "
            f"mean {statistics.median(means):6.1f} us, raw SQL {statistics.median(raw):5.1f} us"
        )


if __name__ == "__main__":
    main()
