"""`make gpu-check`: the checks that need a GPU, in one script of under 8 minutes on an H100.

Run from the repository root with the package on the path (the device image has python3 with torch,
transformers, accelerate, pandas, scikit-learn, seaborn and pytest; no papermill, no datasets):

    PYTHONPATH=. python benchmarks/gpu_check.py            # on a GPU: the full check
    PYTHONPATH=. python benchmarks/gpu_check.py --dry-run  # small CPU versions of every step

Steps:
  1. the CUDA tests (tests/test_cuda.py and every test whose name says cuda): capture on CUDA against the CPU
     in float32 and bfloat16, device_map="auto" on a GPU, t_emp at extreme probabilities against mpmath on
     CUDA, the Fisher algebra on CUDA, the out-of-memory back-off with a real CUDA OOM;
  2. `make bench` on CUDA: benchmarks/bench_boundary.py --device cuda (the study's bisection against
     fisherlib's Newton, V = 50 000), for the ratio;
  3. the real-size run of issue 9 item 4 on CUDA: benchmarks/bench_real.py --device cuda for the three
     heads (pythia-1b, Llama-3.2-1B, Qwen3-1.7B geometries, 2-layer trunk, study parameters);
  4. the sharded measurement of issue 20 on the pythia-1b geometry: benchmarks/bench_distributed.py, the
     sweep and the layer study with 1 process and, when the device has more than one GPU, with all of them
     (needs pyyaml and pyarrow on the image: without them the step fails and says so);
and prints one table: seconds per position and peak GPU memory per stage and head, the bench ratio, and
the sharded steps' wall times.

Without CUDA (or with --dry-run) every step runs a small CPU version instead, so that the script itself
is checked, and the output says which steps were skipped for want of a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(step: str, command: list[str], timeout: int) -> tuple[int, str, float]:
    """Run `command` from the repository root with the package on the path; return (code, output, seconds)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    print(f"\n=== {step}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:
        code, output = 124, f"{error.stdout or ''}{error.stderr or ''}\n(timed out after {timeout}s)"
        output = output if isinstance(output, str) else output.decode(errors="replace")
    seconds = time.perf_counter() - started
    tail = "\n".join(line for line in output.splitlines()[-15:] if "Warning" not in line)
    print(tail, flush=True)
    print(f"=== {step}: exit {code} in {seconds:.0f}s", flush=True)
    return code, output, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="small CPU versions of every step, even with a GPU")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    python = sys.executable
    skipped: list[str] = []
    if cuda:
        print(f"GPU check on {torch.cuda.get_device_name(0)}; torch {torch.__version__}", flush=True)
        bench_boundary = [python, "benchmarks/bench_boundary.py", "--device", "cuda", "--repeats", "3"]
        bench_real = [python, "benchmarks/bench_real.py", "--device", "cuda", "--layers", "2", "--positions", "200",
                      "--sweep-positions", "100", "--full-f-positions", "8", "--batch-size", "16", "--max-context", "512"]  # fmt: skip
        gpus = torch.cuda.device_count()
        bench_distributed = [python, "benchmarks/bench_distributed.py", "--geometry", "pythia-1b", "--steps", "sweep", "layers",
                             "--nproc", "1", *([str(gpus)] if gpus > 1 else []), "-p", "n_positions", "64",
                             "-p", "layer_positions", "16"]  # fmt: skip
    else:
        why = "--dry-run" if args.dry_run else "CUDA is not available here"
        print(f"DRY RUN ({why}): every step runs a small CPU version; nothing below measures a GPU.", flush=True)
        skipped = [
            "the CUDA tests (collected and skipped: they need a CUDA device)",
            "make bench on CUDA (ran bench_boundary.py on the CPU at V = 2000 instead of V = 50 000 on CUDA)",
            "the real-size sweep on CUDA (ran bench_real.py for pythia-1b on the CPU, 4 positions, 1-layer trunk)",
            "the sharded steps on CUDA (ran bench_distributed.py's sweep for pythia-1b on the CPU, 8 positions, 1 and 2 processes)",
        ]
        bench_boundary = [python, "benchmarks/bench_boundary.py", "--vocab", "2000", "--width", "64", "--positions", "4",
                          "--directions", "6", "--repeats", "1"]  # fmt: skip
        bench_real = [python, "benchmarks/bench_real.py", "--geometry", "pythia-1b", "--positions", "4",
                      "--sweep-positions", "1", "--full-f-positions", "1", "--max-context", "128"]  # fmt: skip
        bench_distributed = [python, "benchmarks/bench_distributed.py", "--geometry", "pythia-1b", "--layers", "1", "--steps", "sweep",
                             "--nproc", "1", "2", "--threads-each", "1", "-p", "n_positions", "8", "-p", "max_context", "64",
                             "-p", "eps_grid", "[0.01, 1.0]"]  # fmt: skip

    codes = {}
    code, output, _ = run(
        "CUDA tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
                       "tests/core/test_boundary.py", "tests/layers/test_layers.py", "-k", "cuda"], timeout=240 if cuda else 120,
    )  # fmt: skip
    # pytest's exit code 5 ("no tests ran") cannot happen: the file always collects; all skipped is 0.
    codes["CUDA tests"] = code
    summary = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|error).*?)\s*=*$", output, re.MULTILINE)
    tests_line = summary[-1] if summary else "(no pytest summary)"

    code, output, _ = run("make bench", bench_boundary, timeout=200 if cuda else 120)
    codes["make bench"] = code
    match = re.search(r"speedup ([\d.]+)x max_rel_err (\S+)", output)
    bench_line = f"speedup {match.group(1)}x, max rel err {match.group(2)}" if match else "(no result)"

    with tempfile.TemporaryDirectory() as folder:
        rows_path = Path(folder) / "bench_real.json"
        code, output, _ = run("real-size sweep", [*bench_real, "--json", str(rows_path)], timeout=330 if cuda else 240)
        codes["real-size sweep"] = code
        rows = json.loads(rows_path.read_text())["rows"] if rows_path.is_file() else []

    code, output, _ = run("sharded steps", bench_distributed, timeout=300)
    codes["sharded steps"] = code
    sharded_lines = [line for line in output.splitlines() if re.match(r"^(step|sweep|layers)\s", line)]

    memory = "peak GPU GiB" if cuda else "peak RSS GiB"
    print("\n" + "=" * 100)
    print(f"GPU CHECK{' (DRY RUN on the CPU)' if not cuda else ''}: {torch.cuda.get_device_name(0) if cuda else 'cpu'}")
    header = f"{'head':<14} | {'sample s/pos':>12} {memory:>12} | {'sweep s/pos':>11} {memory:>12} | {'full F s/pos':>12} {memory:>12}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['geometry']:<14} | {r['sample_s_per_pos']:>12.4f} {r['sample_peak_gib']:>12.2f} | "
              f"{r['sweep_s_per_pos']:>11.4f} {r['sweep_peak_gib']:>12.2f} | {r['full_f_s_per_pos']:>12.4f} "
              f"{r['full_f_peak_gib']:>12.2f}")  # fmt: skip
    if not rows:
        print("(the real-size run gave no rows; see its output above)")
    print(f"make bench ratio (study bisection / fisherlib): {bench_line}")
    print("sharded steps (bench_distributed.py, pythia-1b geometry; wall s with start-up, ratio to 1 process):")
    for line in sharded_lines or ["(no rows; see the step's output above)"]:
        print(f"  {line}")
    print(f"CUDA tests: {tests_line}")
    for step, code in codes.items():
        print(f"{step}: {'ok' if code == 0 else f'FAILED (exit {code})'}")
    for line in skipped:
        print(f"skipped: {line}")
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
