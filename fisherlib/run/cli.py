"""Command line: `fisherlib sample …` draws positions, `fisherlib tiny` trains the embedded model, `fisherlib paper` assembles the summary,
`fisherlib steer` prints the KL budget of a steering vector on disk."""

from __future__ import annotations

import argparse
import logging
import sys

from ..core.errors import FisherlibError
from .steer import add_arguments as add_steer_arguments


def _sample(args: argparse.Namespace) -> None:
    from ..data.sampling import sample_summary, strata_counts
    from .inputs import load_sample
    from .outputs import save_table
    from .params import StudyParams

    params = StudyParams.create(
        arch=args.arch, corpora=args.corpora, n_positions=args.n_positions, seed=args.seed, top_k=args.top_k,
        max_context=args.max_context, device=args.device, dtype=args.dtype, run_name=args.run_name,
    )  # fmt: skip
    sample = load_sample(params, args.seed)
    save_table(strata_counts(sample.table), "sample_strata", params)
    print(sample_summary(sample.table).to_string(index=False))
    print(f"{len(sample)} positions; tables in {params.results_dir}, cache in {params.cache_path}")


def _tiny(args: argparse.Namespace) -> None:
    from ..models.tiny import ensure_tiny_model, train_tiny_model

    if args.train:
        # The recipe of the shipped weights (`models/tiny`), from scratch: make tiny-model.
        print(train_tiny_model(args.output, seed=args.seed))
    else:
        print(ensure_tiny_model(seed=args.seed))


def _measure(args: argparse.Namespace) -> None:
    import yaml

    from .distributed import measure
    from .params import StudyParams, check_parameter_names

    values = {}
    for file in args.file:
        values.update(yaml.safe_load(open(file).read()) or {})
    for text in args.yaml:
        values.update(yaml.safe_load(text) or {})
    for name, value in args.parameter:
        values[name] = yaml.safe_load(value) if value else value
    check_parameter_names(values)
    measure(StudyParams.create(**values), args.steps)


def _grid(args: argparse.Namespace) -> None:
    from .grid import check_grid, grid_runs, submit_grid

    runs = grid_runs(args.archs, args.revisions, args.seeds, args.make_args)
    check_grid(runs)
    print(f"grid of {len(runs)} run(s) on {args.executor}:")
    status = submit_grid(runs, args.executor, partition=args.partition, gpus_per_job=args.gpus_per_job, mem_gb=args.mem_gb,
                         time_min=args.time_min, wait=not args.no_wait)  # fmt: skip
    failed = [run for run, state in status.items() if state.startswith("failed")]
    if failed:
        raise FisherlibError(f"{len(failed)} of {len(status)} run(s) failed: {', '.join(failed)}; rerun the grid to resubmit them")


def _readme(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ..report.readme import write_readme

    changed = write_readme(Path(args.readme), Path(args.results))
    print(f"{args.readme}: results block {'rewritten' if changed else 'unchanged'} from {args.results}/")


def _paper(args: argparse.Namespace) -> None:
    from ..report.paper import write_summary

    print(f"summary written to {write_summary()}")


def _book(args: argparse.Namespace) -> None:
    from ..report.book import build_book

    print(f"book written to {build_book(out=args.out)}")


def _verify(args: argparse.Namespace) -> int:
    from contextlib import nullcontext
    from pathlib import Path

    from ..report.verify import committed_copy, compare_runs

    run_dir = Path(args.results)
    against = nullcontext(Path(args.against)) if args.against else committed_copy(run_dir, args.revision)
    with against as reference:
        comparison = compare_runs(run_dir, reference)
    for line in comparison.report():
        print(line)
    return 0 if comparison.reproduced else 1


def _steer(args: argparse.Namespace) -> int:
    from .steer import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="fisherlib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="draw rank-stratified positions (cached under results/<run>/cache; run: scratch unless --run-name)")
    sample.add_argument("--arch", default="tiny", help="registry name (tiny, pythia, llama, qwen), hub id or model folder")
    sample.add_argument("--corpora", nargs="*", default=[], help="corpus names or DOMAIN=PATH files (default: the arch's)")
    sample.add_argument("--n-positions", type=int, default=200)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--top-k", type=int, default=64)
    sample.add_argument("--max-context", type=int, default=256)
    sample.add_argument("--device", default="")
    sample.add_argument("--dtype", default="")
    sample.add_argument("--run-name", default="", help="the run to write to (default: scratch, never a published run)")
    sample.set_defaults(run=_sample)
    tiny = commands.add_parser("tiny", help="train (or find) the embedded default model and print its folder")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--train", action="store_true", help="train from scratch (about 75 minutes on one core) instead of finding a copy")
    tiny.add_argument("--output", default="models/tiny", help="where --train writes the model (default: models/tiny)")
    tiny.set_defaults(run=_tiny)
    measure = commands.add_parser(
        "measure", help="run a measurement step into the run's cache, sharded over torchrun's processes "
        "(torchrun --nproc_per_node N -m fisherlib.run.cli measure sample sweep layers -f params/tiny.yaml -p run_name tiny)",
    )  # fmt: skip
    measure.add_argument("steps", nargs="+", metavar="step", help="the steps to measure, in order: sample, sweep, layers, dynamics, steering")
    measure.add_argument("-f", "--file", action="append", default=[], help="a YAML file of notebook parameters")
    measure.add_argument("-y", "--yaml", action="append", default=[], help="parameters as a YAML string (lists)")
    measure.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                         help="a notebook parameter (YAML value), as papermill's -p")  # fmt: skip
    measure.set_defaults(run=_measure)
    grid = commands.add_parser("grid", help="one `make reproduce` job per (arch, revision, seed) through submitit (SLURM or local)")
    grid.add_argument("--archs", nargs="+", required=True, help="registry names or hub ids")
    grid.add_argument("--revisions", nargs="*", default=[], help="model revisions (hub branches, tiny's step<N>)")
    grid.add_argument("--seeds", nargs="*", default=[], help="seeds (whole numbers), one run each")
    grid.add_argument("--executor", default="slurm", choices=["slurm", "local"])
    grid.add_argument("--partition", default="", help="SLURM partition")
    grid.add_argument("--gpus-per-job", type=int, default=1)
    grid.add_argument("--mem-gb", type=int, default=64)
    grid.add_argument("--time-min", type=int, default=240, help="each job's time limit in minutes")
    grid.add_argument("--no-wait", action="store_true", help="submit and return (rerun the grid later to see what failed)")
    grid.add_argument("--make-args", nargs="*", default=[], help="extra make variables for every job (e.g. PARAMS=params/x.yaml)")
    grid.set_defaults(run=_grid)
    paper = commands.add_parser("paper", help="assemble results/summary.md from every run so far")
    paper.set_defaults(run=_paper)
    readme = commands.add_parser("readme", help="rewrite README.md's results block from a run's tables")
    readme.add_argument("--results", default="results/tiny", help="the run's results folder (default: results/tiny)")
    readme.add_argument("--readme", default="README.md")
    readme.set_defaults(run=_readme)
    book = commands.add_parser("book", help="build the static site of every complete run (default: build/book/html/index.html)")
    book.add_argument("--out", default=None, help="the book's folder (default: build/book)")
    book.set_defaults(run=_book)
    verify = commands.add_parser(
        "verify", help="did a rerun reproduce the run? compare its tables, verdicts and notebooks' text with the committed copy"
    )
    verify.add_argument("--results", default="results/tiny", help="the run's results folder (default: results/tiny)")
    verify.add_argument("--against", default="", help="a folder holding the reference copy (default: the committed one, git HEAD)")
    verify.add_argument("--revision", default="HEAD", help="the git revision whose copy is the reference (default: HEAD)")
    verify.set_defaults(run=_verify)
    steer = commands.add_parser(
        "steer", help="the KL budget of a steering vector on disk: how large may α be in r + α v before the next-token "
        "distributions move by ε (fisherlib steer --model tiny --layer 2 --vector v.safetensors --prompts prompts.txt)",
    )  # fmt: skip
    add_steer_arguments(steer)
    steer.set_defaults(run=_steer)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        status = args.run(args)
    except FisherlibError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
