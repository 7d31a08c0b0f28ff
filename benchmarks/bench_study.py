"""Benchmark: the whole study on one model, notebook by notebook, as `make reproduce` runs it.

Runs `make reproduce ARCH=<arch> [CORPORA=...] RUN=<run>` with the run's cache emptied first (unless
`--warm`), and prints the seconds of every notebook (the runner's own per-notebook line), their sum and the
wall time, so that the cost of a real model on this machine is a printed figure and never a typed one.

    python benchmarks/bench_study.py                                   # tiny, into the run bench-tiny
    python benchmarks/bench_study.py --arch smollm2 --fixture-corpora --run smollm2   # the published SmolLM2 run
    make bench-study BENCH_STUDY_ARGS="--arch smollm2 --fixture-corpora"

`--fixture-corpora` passes the four offline corpus samples of `../shared/fixtures/corpora` (math, code,
dialogue, wiki). With `--run` naming a published run, the run is republished as `make reproduce` would.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The runner's line when a notebook ends: "  03_direction_sweep   1351 s  3 tables, 1 figure -> ..." (or "not applicable").
NOTEBOOK_LINE = re.compile(r"^\s+(\d\d_\w+)\s+(\d+) s  (.* -> .*|not applicable: .*)$")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny", help="registry name, hub id (make's ARCH)")
    parser.add_argument("--run", default="", help="the run's name (default: bench-<arch>)")
    parser.add_argument("--corpora", default="", help="make's CORPORA, e.g. 'math=a.jsonl wiki=b.txt'")
    parser.add_argument("--fixture-corpora", action="store_true", help="the four corpus samples of ../shared/fixtures")
    parser.add_argument("--warm", action="store_true", help="keep the run's cache (default: empty it first)")
    args = parser.parse_args(argv)
    run = args.run or f"bench-{args.arch.replace('/', '--')}"
    corpora = args.corpora
    if args.fixture_corpora:
        from fisherlib.data.corpora import fixture_corpora

        shared = Path("..") / "shared"  # relative to the repository root, as make takes corpus paths: no machine's path is recorded
        if not (ROOT / shared / "fixtures" / "corpora").is_dir():
            parser.error(f"--fixture-corpora needs {ROOT / shared}/fixtures/corpora")
        corpora = " ".join(fixture_corpora(shared))
    if not args.warm:
        shutil.rmtree(ROOT / "results" / run / "cache", ignore_errors=True)
        shutil.rmtree(ROOT / "runs" / run, ignore_errors=True)
    command = ["make", "--no-print-directory", "reproduce", f"ARCH={args.arch}", f"RUN={run}"] + ([f"CORPORA={corpora}"] if corpora else [])
    print(" ".join(command[:5]) + (" CORPORA=..." if corpora else ""), flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ)
    seconds: dict[str, int] = {}
    for line in process.stdout:
        print(line, end="", flush=True)
        match = NOTEBOOK_LINE.match(line.rstrip("\n"))
        if match:
            seconds[match.group(1)] = int(match.group(2))
    code = process.wait()
    wall = time.perf_counter() - started
    print(f"\n{'notebook':<28} {'seconds':>8}")
    for name, value in seconds.items():
        print(f"{name:<28} {value:>8}")
    print(f"{'sum of notebooks':<28} {sum(seconds.values()):>8}")
    print(f"{'wall (make reproduce)':<28} {wall:>8.0f}")
    print(f"run {run}: {'complete' if code == 0 else f'make exited {code}'}; {os.cpu_count()} CPUs, {'warm' if args.warm else 'empty'} cache")
    return code


if __name__ == "__main__":
    sys.exit(main())
