"""Benchmark: the sharded measurement steps (`fisherlib measure`) with 1 process and with N, timed in one run.

The sweep, the layer study and notebook 11's steering budgets by default.

The run's sample is drawn once into a scratch cache; then, for every process count, a copy of that cache
gets `measure <step>` from scratch (`torchrun --nproc_per_node N`, gloo on the CPU), with the machine's
threads split evenly between the processes (OMP_NUM_THREADS). Wall times include what a user waits for:
torchrun's start-up, each rank loading the model, the gather. Prints one row per (step, processes), the
ratio to one process, and whether the gathered table is the one-process table byte for byte (expected
only at equal threads per process: a reduction split over more threads can round its last bit
differently).

    python benchmarks/bench_distributed.py                          # tiny's parameters, 1 and 2 processes
    python benchmarks/bench_distributed.py --threads-each 1                 # one thread per process: the same bytes
    python benchmarks/bench_distributed.py --steps sweep --nproc 1 2 4 -p n_positions 800
    python benchmarks/bench_distributed.py --geometry pythia-1b -p n_positions 100   # a real-size head (bench_real.py)

`--geometry` builds one of `bench_real.py`'s real-tier LM heads at full size (random weights, a `--layers`
trunk, its word-level tokenizer over the embedded corpora), saves it to the scratch folder, and measures it
as a model folder with pythia's parameters on the embedded corpora.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = {"sweep": "sweep-seed*-*.parquet", "layers": "layers-seed*-*.parquet", "steering": "steering-seed*-*/*.parquet"}


def measure(cache: Path, steps: list[str], nproc: int, threads: int, parameters: list[str]) -> float:
    """Run `fisherlib measure <steps>` into `cache` with `nproc` processes of `threads` threads; return the wall seconds."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] if nproc > 1 else [sys.executable]
    command = [*launcher, "-m", "fisherlib.run.cli", "measure", *steps, *parameters, "-p", "cache_dir", str(cache),
               "-p", "results_root", str(cache.parent / "results"), "-p", "run_name", cache.name]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"`{' '.join(command)}` failed:\n{done.stderr[-3000:]}")
    return seconds


def table_bytes(cache: Path, step: str) -> bytes:
    """The bytes of the step's gathered table(s) (steering: its folder's five tables, in name order)."""
    paths = sorted(p for p in cache.glob(OUTPUT[step]) if ".shard" not in p.name and "positions" not in p.name)
    return b"".join(path.read_bytes() for path in paths)


def save_geometry(name: str, layers: int, folder: Path) -> Path:
    """Save `bench_real.py`'s model of geometry `name` (float32, `layers` trunk layers) and its tokenizer to `folder`."""
    import torch

    from bench_real import GEOMETRIES, build_model

    if name not in GEOMETRIES:
        sys.exit(f"--geometry {name!r} is not one of bench_real.py's: {', '.join(GEOMETRIES)}")
    loaded = build_model(name, layers, torch.device("cpu"), torch.float32)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    print(f"{name}: V = {loaded.head.vocab_size}, d = {loaded.head.hidden_size}, {layers} trunk layers, saved to {folder}", flush=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params/tiny.yaml", help="the run's parameter file (default: tiny's)")
    parser.add_argument("--steps", nargs="+", default=["sweep", "layers", "steering"], choices=sorted(OUTPUT))
    parser.add_argument("--nproc", nargs="+", type=int, default=[1, 2], help="process counts (the first is the baseline)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads in all, split between the processes")
    parser.add_argument("--threads-each", type=int, default=None,
                        help="threads of every process instead (1: equal threads, identical tables)")  # fmt: skip
    parser.add_argument("--geometry", default=None,
                        help="a real-size head of bench_real.py (pythia-1b, llama-3.2-1b, qwen3-1.7b) instead of the --params model")  # fmt: skip
    parser.add_argument("--layers", type=int, default=2, help="trunk layers of --geometry's model (default 2)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = parser.parse_args()
    overrides = [item for pair in args.parameter for item in ("-p", *pair)]
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as scratch:
        parameters = ["-f", args.params, *overrides]
        if args.geometry:
            folder = save_geometry(args.geometry, args.layers, Path(scratch) / args.geometry)
            parameters = ["-f", "params/pythia.yaml", "-p", "arch", str(folder), "-y", "corpora: [stdlib-code, stdlib-docs]", *overrides]
        sampled = Path(scratch) / "sampled"
        print(f"sampling once ({args.params}) into {sampled} ...", flush=True)
        measure(sampled, ["sample"], 1, args.threads, parameters)
        print(f"{'step':<8} {'processes':>9} {'threads each':>12} {'wall s':>8} {'ratio':>6}  same table as {args.nproc[0]} process(es)")
        for step in args.steps:
            baseline_seconds, baseline_table = None, None
            for nproc in args.nproc:
                cache = Path(scratch) / f"{step}-{nproc}"
                shutil.copytree(sampled, cache)
                threads = args.threads_each or max(1, args.threads // nproc)
                seconds = measure(cache, [step], nproc, threads, parameters)
                table = table_bytes(cache, step)
                if baseline_seconds is None:
                    baseline_seconds, baseline_table, same = seconds, table, "-"
                else:
                    same = "byte for byte" if table == baseline_table else "no"
                print(f"{step:<8} {nproc:>9} {threads:>12} {seconds:>8.1f} {baseline_seconds / seconds:>5.2f}x  {same}", flush=True)
                shutil.rmtree(cache)


if __name__ == "__main__":
    main()
