"""Run grids through submitit: one `make reproduce` job per (architecture, revision, seed), on SLURM or locally.

`make grid ARCHS="pythia EleutherAI/pythia-410m" REVISIONS="step1000 step143000" SEEDS="0 1"` submits one job
per run, named as `make reproduce` names it (the arch with `/` as `--`, `-<revision>`, and `-seed<s>` when
seeds are given), with the cluster's partition, GPUs per job, memory and time limit as options. A run
that already has a complete `results/<run>/run.json` is skipped, so rerunning the grid resubmits only the
runs that failed or never ran. `EXECUTOR=local` runs the same jobs on this machine through submitit's local
executor. Each job's log is under `runs/grid/<job id>_0_log.{out,err}`; a failed job's path is printed.
`make paper` then assembles every finished run.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import FisherlibError
from ..io.locations import repo_root

EXECUTORS = ("slurm", "local")


@dataclass(frozen=True)
class GridRun:
    """One run of a grid: what `make reproduce` is given, and the run's name."""

    arch: str
    revision: str = ""
    seed: int | None = None
    make_args: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        name = self.arch.replace("/", "--") + (f"-{self.revision}" if self.revision else "")
        return name + (f"-seed{self.seed}" if self.seed is not None else "")

    def command(self) -> list[str]:
        """The job's command line: `make reproduce` with this run's variables."""
        args = ["make", "--no-print-directory", "reproduce", f"ARCH={self.arch}", f"RUN={self.name}"]
        args += [f"REVISION={self.revision}"] if self.revision else []
        args += [f"SEEDS={self.seed}"] if self.seed is not None else []
        return args + list(self.make_args)


def grid_runs(archs, revisions=(), seeds=(), make_args=()) -> list[GridRun]:
    """Return the runs of the grid `archs × revisions × seeds` (an empty axis is one default value)."""
    archs = [a for a in archs if a]
    if not archs:
        raise FisherlibError("the grid has no architecture: give ARCHS='tiny' (registry names, hub ids)")
    try:
        seeds = [int(s) for s in seeds]
    except ValueError:
        raise FisherlibError(f"SEEDS must be whole numbers separated by spaces, got {' '.join(map(str, seeds))!r}") from None
    return [
        GridRun(arch, revision, seed, tuple(make_args)) for arch, revision, seed in itertools.product(archs, list(revisions) or [""], seeds or [None])
    ]


def job_reason(stdout: Path) -> str:
    """The reason a job's `make reproduce` gave for failing: the last line its notebook runner printed as an error."""
    try:
        lines = [line.strip() for line in stdout.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    reasons = [line for line in lines if line.startswith("error:") or " FAILED " in line or "Error:" in line]
    return reasons[-1] if reasons else ""


def check_grid(runs: list[GridRun], root: Path | None = None) -> None:
    """Refuse, before anything is submitted, what a job would only find out after it started.

    Raises:
        FisherlibError: an architecture that is neither a registry name, a hub id nor a model folder, or a
            `PARAMS=` file that does not exist.
    """
    from ..models.loading import resolve_model_id

    root = Path(root) if root is not None else repo_root()
    for arch in dict.fromkeys(run.arch for run in runs):
        resolve_model_id(arch)  # UnknownArchitectureError names what is accepted
    for arg in dict.fromkeys(a for run in runs for a in run.make_args):
        name, _, value = arg.partition("=")
        if name == "PARAMS" and not (root / value).is_file():
            raise FisherlibError(f"PARAMS={value}: no such parameters file under {root}; give one of params/*.yaml")


def is_complete(results_root: Path, run: str) -> bool:
    """Whether `results_root/run/run.json` records a complete `make reproduce`."""
    try:
        return bool(json.loads((results_root / run / "run.json").read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def submit_grid(
    runs: list[GridRun], executor: str = "slurm", root: Path | None = None, partition: str = "", gpus_per_job: int = 1,
    mem_gb: int = 64, time_min: int = 240, wait: bool = True, say=print,
) -> dict[str, str]:  # fmt: skip
    """Submit every run of `runs` without a complete result; with `wait`, wait and report each job.

    Returns `{run: status}` with status `skipped` (already complete), `submitted` (without `wait`), `done`
    or `failed: <log path>`. Runs from `root` (default: this repository).
    """
    import submitit
    from submitit.helpers import CommandFunction

    if executor not in EXECUTORS:
        raise FisherlibError(f"EXECUTOR must be one of {', '.join(EXECUTORS)}, not {executor!r}")
    root = Path(root) if root is not None else repo_root()
    status = {run.name: "skipped" for run in runs if is_complete(root / "results", run.name)}
    todo = [run for run in runs if run.name not in status]
    for name in status:
        say(f"  {name}: complete, skipped")
    if not todo:
        return status
    folder = root / "runs" / "grid"
    pool = submitit.AutoExecutor(folder=folder, cluster="local" if executor == "local" else "slurm")
    options = dict(timeout_min=time_min, name="fisher-boundary")
    if executor == "slurm":
        options.update(gpus_per_node=gpus_per_job, mem_gb=mem_gb, slurm_partition=partition or None)
    pool.update_parameters(**{k: v for k, v in options.items() if v is not None})
    # verbose: the job copies make's output to its own log as it runs, where `job_reason` finds the failing line.
    # A job's make must not inherit the grid's own make variables (ARCHS, REVISIONS, SEEDS travel in MAKEFLAGS).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    jobs = [(run, pool.submit(CommandFunction(run.command(), cwd=str(root), verbose=True, env=env))) for run in todo]
    for run, job in jobs:
        say(f"  {run.name}: job {job.job_id} ({' '.join(run.command()[2:])})")
        status[run.name] = "submitted"
    if not wait:
        return status
    for run, job in jobs:
        try:
            job.result()
            status[run.name] = "done"
            say(f"  {run.name}: done")
        except Exception:  # noqa: BLE001 - a job's failure is reported with its log, the others go on
            status[run.name] = f"failed: {job.paths.stderr}"
            reason = job_reason(Path(job.paths.stdout))
            say(f"  {run.name}: FAILED{f': {reason}' if reason else ''}; log {job.paths.stderr} (rerun the grid to resubmit the failed runs)")
    return status
