"""What `make` calls to run the study: a run's inputs key, one notebook at a time, and publishing a run.

    python tools/runs.py key --out runs/<run>/inputs.json --run <run> --arch tiny [--model DIR] ...
    python tools/runs.py notebook notebooks/01_x.ipynb runs/<run>/01_x.ipynb --run <run> -f params/tiny.yaml -p arch tiny ...
    python tools/runs.py publish --run <run> --stage runs/<run>/staged

`key` writes every input that changes a run (model folder or id and revision, corpora files, seeds, the
parameters file) to `runs/<run>/inputs.json`, rewriting it only when it changed; make calls it while it
reads the Makefile. The notebook rules depend on that file, on `fisherlib/` and on the environment's
stamp, so `make` (and `make -n`) reruns exactly what a changed input, library or environment affects.

`notebook` executes one notebook through papermill and prints one line: its name, seconds and what it
wrote. Everything else (cell outputs, warnings, the kernel's own messages) goes to
`runs/<run>/logs/<notebook>.log`; a failure ends with the error's own message and the log's path.
Long steps report progress through `fisherlib.io.progress`, shown on the same line. A lock per notebook
of a run makes a second `make` of the same run wait rather than do the work twice.

`publish` copies the staged tables and figures of a run (`runs/<run>/staged/`) into `results/<run>/`
and `figures/<run>/` once every notebook asked for has succeeded, with `results/<run>/run.json` saying
so: a failed run never touches the published results. The executed notebooks go to
`results/<run>/notebooks/`, made byte-stable by `fisherlib.report.notebooks` (no timings, kernel
state or absolute paths; figures linked to the committed PNGs), so an unchanged rerun changes no file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import filecmp
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `key` runs before the environment exists (make reads it with python3)

from fisherlib.io.atomic import atomic_write_bytes, make_shared  # noqa: E402 - stdlib only, no torch

PROGRESS_ENV = "FISHERLIB_PROGRESS"  # fisherlib.io.progress.PROGRESS_ENV; not imported: `key` runs without torch
NAME_WIDTH = 28
# A notebook that stops with fisherlib's NotApplicable has run: the run publishes, with the reason recorded here.
NOT_APPLICABLE = "NotApplicable"
NOT_APPLICABLE_FILE = "not_applicable.json"  # the same name as fisherlib.report.claims.NOT_APPLICABLE_FILE
TIMINGS_FILE = "timings.json"  # each notebook's wall time of the last run (fisherlib.report.readme.runs_block reads it)
NOTEBOOKS_FOLDER = "notebooks"  # results/<run>/notebooks/: the executed notebooks, published


# --- the inputs key -------------------------------------------------------------------------------


def fingerprint(path: Path) -> dict[str, str] | str:
    """Return size and modification time of `path` (a file, or each file directly inside a folder)."""
    if path.is_file():
        stat = path.stat()
        return f"{stat.st_size}-{stat.st_mtime_ns}"
    if path.is_dir():
        return {child.name: fingerprint(child) for child in sorted(path.iterdir()) if child.is_file()}
    return "missing"


def run_inputs(
    run: str, arch: str, model: str = "", revision: str = "", corpora: list[str] | None = None,
    seeds: list[str] | None = None, params_file: str = "",
) -> dict[str, Any]:  # fmt: skip
    """Return every input that changes run `run`'s tables, as plain JSON values."""
    files: dict[str, Any] = {}
    model_path = Path(model).expanduser().resolve() if model else None
    if model_path is not None:
        files[str(model_path)] = fingerprint(model_path)
    elif arch == "tiny" and (ROOT / "models" / "tiny").is_dir():
        tiny = ROOT / "models" / "tiny"
        files["models/tiny"] = fingerprint(tiny / "checkpoints" / revision if revision else tiny)
    for spec in corpora or []:
        path = Path(spec.rpartition("=")[2]).expanduser()
        if path.exists():
            files[str(path.resolve())] = fingerprint(path)
    params_path = ROOT / params_file if params_file else None
    return {
        "run": run,
        "model": str(model_path) if model_path else arch,
        "revision": revision,
        "corpora": list(corpora or []),
        "seeds": list(seeds or []),
        "params_file": params_file,
        "params": params_path.read_text() if params_path and params_path.is_file() else "",
        "files": files,
    }


def write_if_changed(path: Path, inputs: dict[str, Any]) -> list[str]:
    """Write `inputs` to `path` unless it already holds them; return the names of the fields that changed."""
    text = json.dumps(inputs, indent=2, sort_keys=True) + "\n"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    if old == inputs:
        return []
    atomic_write_bytes(path, text.encode())
    return ["(first run)"] if old is None else sorted(k for k in set(old) | set(inputs) if old.get(k) != inputs.get(k))


def command_key(args: argparse.Namespace) -> int:
    inputs = run_inputs(args.run, args.arch, args.model, args.revision, args.corpora.split(), args.seeds.split(), args.params_file)
    out = Path(args.out)
    if args.dry_run:  # compare, and write the new inputs beside the key for make -n to see as newer
        try:
            old = json.loads(out.read_text())
        except (OSError, ValueError):
            old = None
        if old == inputs:
            return 0
        changed = ["(first run)"] if old is None else sorted(k for k in set(old) | set(inputs) if old.get(k) != inputs.get(k))
        atomic_write_bytes(out.with_name(out.name + ".dry-run"), (json.dumps(inputs, indent=2, sort_keys=True) + "\n").encode())
    else:
        changed = write_if_changed(out, inputs)
    if changed and changed != ["(first run)"]:
        print(f"run {args.run}: inputs changed ({', '.join(changed)}); its notebooks {'would ' if args.dry_run else ''}rerun")
    elif changed and args.dry_run:
        print(f"run {args.run}: first run")
    return 0


# --- one notebook -----------------------------------------------------------------------------------


def notebook_parameters(files: list[str], yamls: list[str], pairs: list[list[str]]) -> dict[str, Any]:
    """Return papermill's parameters from `-f` files, `-y` YAML and `-p name value`, in papermill's order."""
    import yaml
    from papermill.cli import _resolve_type

    parameters: dict[str, Any] = {}
    for file in files:
        parameters.update(yaml.safe_load(Path(file).read_text()) or {})
    for text in yamls:
        parameters.update(yaml.safe_load(text) or {})
    for name, value in pairs:
        parameters[name] = _resolve_type(value)
    return parameters


@contextlib.contextmanager
def notebook_lock(run_dir: Path, stem: str, say):
    """Hold the lock of notebook `stem` of this run; say so and wait when another process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / f".{stem}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            say(f"  {stem:<{NAME_WIDTH}} in progress in {holder}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)


def up_to_date(output: Path, prerequisites: list[str]) -> bool:
    """Return whether `output` exists and is newer than every prerequisite (make's own test)."""
    if not output.is_file():
        return False
    newest = max((Path(p).stat().st_mtime_ns for p in prerequisites if Path(p).exists()), default=0)
    return output.stat().st_mtime_ns >= newest


def rate(state: dict[str, Any]) -> str:
    """The step's rate as a reader wants it: `(4.7 pos/s)`, or `(38 s/layer)` when a unit takes longer than a second."""
    n, elapsed = state.get("n") or 0, state.get("elapsed_s") or 0
    if n <= 0 or elapsed <= 0:
        return ""
    per_second = n / elapsed
    return f" ({per_second:.1f} {state['unit']}/s)" if per_second >= 1 else f" ({1 / per_second:.0f} s/{state['unit']})"


class ProgressLine(threading.Thread):
    """Show the progress that fisherlib reports for the running notebook: one rewritten line on a terminal,
    otherwise a line when the step changes or every `every_s` seconds."""

    def __init__(self, terminal, stem: str, path: Path, every_s: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.terminal, self.stem, self.path, self.every_s = terminal, stem, path, every_s
        self.tty = terminal.isatty()
        self.stopped = threading.Event()
        self.started_at = time.monotonic()
        self.started_ns = time.time_ns()

    def run(self) -> None:
        last_desc, last_line_at = None, 0.0
        while not self.stopped.wait(0.5):
            try:
                if self.path.stat().st_mtime_ns < self.started_ns:
                    continue  # left by an earlier run, not this one
                state = json.loads(self.path.read_text())
            except (OSError, ValueError):
                continue
            done = f"{state['n']:.0f}" + (f"/{state['total']:.0f}" if state.get("total") else "")
            line = f"  {self.stem:<{NAME_WIDTH}} {time.monotonic() - self.started_at:5.0f} s  {state['desc']} {done} {state['unit']}{rate(state)}"
            if self.tty:
                self.terminal.write("\r\x1b[K" + line)
                self.terminal.flush()
            elif state["desc"] != last_desc or time.monotonic() - last_line_at >= self.every_s:
                self.terminal.write(line + "\n")
                self.terminal.flush()
                last_desc, last_line_at = state["desc"], time.monotonic()

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        if self.tty:
            self.terminal.write("\r\x1b[K")
            self.terminal.flush()


@contextlib.contextmanager
def output_to(log_path: Path):
    """Send file descriptors 1 and 2 (this process and the kernel it starts) to `log_path`; yield the terminal."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        handler = logging.StreamHandler(log)  # not sys.stderr, which a caller (pytest) may have replaced
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        try:
            yield terminal
        finally:
            logging.getLogger().removeHandler(handler)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _changed_files(folder: Path, since_ns: int) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime_ns >= since_ns and "cache" not in p.parts)


def _written(parameters: dict[str, Any], run: str, since_ns: int) -> str:
    """Say what a notebook wrote: its new tables and figures, and the staged folder they are in."""
    results = ROOT / str(parameters.get("results_root", "results")) / run
    figures = ROOT / str(parameters.get("figures_root", "figures")) / run
    tables = [p for p in _changed_files(results, since_ns) if p.suffix == ".csv"] if results.is_dir() else []
    pictures = [p for p in _changed_files(figures, since_ns) if p.suffix == ".png"] if figures.is_dir() else []
    where = os.path.relpath(results.parent.parent if results.parent.name == "results" else results, ROOT)
    return f"{_count(len(tables), 'table')}, {_count(len(pictures), 'figure')} -> {where}/"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _one_line_error(error: BaseException) -> str:
    ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
    if ename:
        return f"{ename}: {evalue}".strip().splitlines()[0] if evalue else ename
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"


def run_notebook(
    source: Path, output: Path, run: str, parameters: dict[str, Any], kernel: str, cwd: Path,
    prerequisites: list[str], terminal=None,
) -> int:  # fmt: skip
    """Execute `source` into `output` (renamed into place on success); print one line; return an exit code."""
    terminal = terminal or sys.stdout
    stem = source.stem
    run_dir = output.parent
    say = lambda line: print(line, file=terminal, flush=True)  # noqa: E731
    with notebook_lock(run_dir, stem, say):
        if prerequisites and up_to_date(output, prerequisites):
            say(f"  {stem:<{NAME_WIDTH}} up to date (executed meanwhile by another make)")
            return 0
        # Absolute: the kernel runs in another working directory (the notebooks' folder).
        (run_dir / "logs" / f"{stem}.progress").resolve().unlink(missing_ok=True)
        for stale in run_dir.glob(f".{stem}.*.ipynb"):  # left by a run that was killed; this one holds the lock
            stale.unlink(missing_ok=True)
        handle, partial = tempfile.mkstemp(prefix=f".{stem}.", suffix=".ipynb", dir=run_dir.resolve())
        os.close(handle)
        try:
            return _execute(source, output, partial, run, parameters, kernel, cwd, terminal, say)
        except KeyboardInterrupt:
            Path(partial).unlink(missing_ok=True)
            raise


def _execute(
    source: Path, output: Path, partial: str, run: str, parameters: dict[str, Any], kernel: str, cwd: Path, terminal, say,
) -> int:  # fmt: skip
    """Run papermill on `source` into `partial`, then rename it into place; print one line; return an exit code."""
    stem, run_dir = source.stem, output.parent
    log_path = run_dir / "logs" / f"{stem}.log"
    progress_path = (run_dir / "logs" / f"{stem}.progress").resolve()
    started, started_ns = time.perf_counter(), time.time_ns()
    error: BaseException | None = None
    os.environ[PROGRESS_ENV] = str(progress_path)
    with output_to(log_path) as shell:
        progress = ProgressLine(shell if terminal is sys.stdout else terminal, stem, progress_path)
        progress.start()
        try:
            import papermill

            papermill.execute_notebook(
                str(source), partial, parameters=parameters, kernel_name=kernel, cwd=str(cwd),
                log_output=True, progress_bar=False,
            )  # fmt: skip
        except Exception as caught:  # noqa: BLE001 - every failure becomes one line and the log's path
            error = caught
            logging.getLogger("runs").exception("notebook %s failed", stem)
        finally:
            progress.stop()
    os.environ.pop(PROGRESS_ENV, None)
    progress_path.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    log = os.path.relpath(log_path, ROOT)
    results = ROOT / str(parameters.get("results_root", "results")) / run
    not_applicable = getattr(error, "ename", None) == NOT_APPLICABLE
    if error is None or not_applicable:
        make_shared(partial)
        os.replace(partial, output)
        reason = str(getattr(error, "evalue", "") or "").strip() if not_applicable else None
        record_not_applicable(results, stem, reason, parameters)
        record_timing(results, stem, seconds, parameters)
        if not_applicable:
            say(f"  {stem:<{NAME_WIDTH}} {seconds:5.0f} s  not applicable: {reason}")
        else:
            say(f"  {stem:<{NAME_WIDTH}} {seconds:5.0f} s  {_written(parameters, run, started_ns)}")
        return 0
    failed = output.with_suffix(".failed.ipynb")
    if Path(partial).stat().st_size > 0:
        make_shared(partial)
        os.replace(partial, failed)
    else:
        os.unlink(partial)
    say(f"  {stem:<{NAME_WIDTH}} FAILED after {seconds:.0f} s: {_one_line_error(error)}")
    say(f"  {'':<{NAME_WIDTH}} log: {log}" + (f"  notebook: {os.path.relpath(failed, ROOT)}" if failed.exists() else ""))
    return 1


def record_timing(results: Path, stem: str, seconds: float, parameters: dict[str, Any]) -> None:
    """Record notebook `stem`'s wall time of this run, and the machine, in `results/timings.json` (the README's table
    of runs reads it: a time is a measured figure, never a typed one). A rerun from a warm cache records its own,
    shorter, time."""
    if not results.is_dir():  # a notebook that wrote no results (a test's) leaves no run behind
        return
    path = results / TIMINGS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    record.setdefault("seconds", {})[stem] = round(float(seconds), 1)
    device = str(parameters.get("device") or "auto")
    record["machine"] = f"{os.cpu_count()} CPU cores, device {device}"
    record["seconds"] = dict(sorted(record["seconds"].items()))
    atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def record_not_applicable(results: Path, stem: str, reason: str | None, parameters: dict[str, Any]) -> None:
    """Record in `results/not_applicable.json` that notebook `stem` does not apply (`reason`), or no longer
    (None), and re-evaluate the claims ledger so that its claims say why they are not testable.

    The file, once made, stays (as `{}` when nothing is left) so that publishing overwrites an older copy.
    """
    path = results / NOT_APPLICABLE_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    if reason is None and stem not in record:
        return
    if reason is None:
        record.pop(stem)
    else:
        record[stem] = reason
    atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    if reason is not None:  # the notebook stopped before writing the ledger: write it here, with the reason
        from fisherlib.run.outputs import write_ledger
        from fisherlib.run.params import StudyParams

        fields = StudyParams.__dataclass_fields__
        write_ledger(StudyParams.create(**{k: v for k, v in parameters.items() if k in fields}))


def command_notebook(args: argparse.Namespace) -> int:
    from fisherlib.core.errors import ParameterError
    from fisherlib.run.params import check_parameter_names

    parameters = notebook_parameters(args.file, args.yaml, args.parameter)
    try:
        check_parameter_names(parameters)  # before the kernel starts: a misspelled name would be ignored
    except ParameterError as error:
        print(f"  {Path(args.source).stem:<{NAME_WIDTH}} FAILED before running: ParameterError: {error}", flush=True)
        return 2
    return run_notebook(
        Path(args.source), Path(args.output), args.run, parameters, args.kernel, Path(args.cwd), args.prerequisites,
    )  # fmt: skip


# --- publishing a run ------------------------------------------------------------------------------


def publish(
    run: str, stage: Path, notebooks: list[str], results_root: Path, figures_root: Path, executed: list[Path] = (),
) -> tuple[int, int]:  # fmt: skip
    """Copy the staged outputs of `run` into `results_root/run` and `figures_root/run`; return (copied, unchanged).

    The cache stays where it is (it is shared by the staged and published run); `run.json` records the
    notebooks that made the published outputs. Each of the `executed` notebooks is written, made
    publishable, to `results_root/run/notebooks/`.
    """
    copied = unchanged = 0
    for path in executed:
        target = results_root / run / NOTEBOOKS_FOLDER / Path(path).name
        data = published_notebook(Path(path), stage, target.parent, figures_root / run).encode()
        if target.is_file() and target.read_bytes() == data:
            unchanged += 1
            continue
        atomic_write_bytes(target, data)
        copied += 1
    for kind, target_root in (("results", results_root), ("figures", figures_root)):
        source = stage / kind / run
        if not source.is_dir():
            continue
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if not path.is_file() or relative.parts[0] == "cache" or path.name.startswith("."):
                continue
            target = target_root / run / relative
            if target.is_file() and filecmp.cmp(path, target, shallow=False):
                unchanged += 1
                continue
            atomic_write_bytes(target, path.read_bytes())
            copied += 1
    record_path = results_root / run / "run.json"
    try:  # `make dynamics` publishes notebook 10 beside the notebooks `make reproduce` published
        earlier = json.loads(record_path.read_text())["notebooks"]
    except (OSError, ValueError, KeyError):
        earlier = []
    record = {"run": run, "complete": True, "notebooks": sorted(set(earlier) | set(notebooks))}
    try:
        skipped = json.loads((results_root / run / NOT_APPLICABLE_FILE).read_text())
    except (OSError, ValueError):
        skipped = {}
    if skipped:
        record["not_applicable"] = skipped
    atomic_write_bytes(record_path, (json.dumps(record, indent=2) + "\n").encode())
    return copied, unchanged


def published_notebook(executed: Path, stage: Path, folder: Path, figures: Path) -> str:
    """Return the executed notebook `executed` as published into `folder`: paths relative to the repository,
    the staged folder read as the published one, figures linked to `figures/<name>.png` relative to `folder`."""
    from fisherlib.report.notebooks import publishable_text

    replacements = [(f"{Path(stage).resolve()}/", ""), (f"{ROOT}/", ""), (f"{Path.home()}/", "~/")]
    link = lambda name: os.path.relpath(Path(figures).resolve() / f"{name}.png", Path(folder).resolve())  # noqa: E731
    return publishable_text(executed.read_text(encoding="utf-8"), replacements, link)


def command_publish(args: argparse.Namespace) -> int:
    results_root, figures_root = ROOT / args.results_root, ROOT / args.figures_root
    with open(_lock_path(Path(args.stage).parent), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        copied, unchanged = publish(
            args.run, Path(args.stage), [Path(n).stem for n in args.notebooks], results_root, figures_root,
            [Path(n) for n in args.notebooks if Path(n).is_file()],
        )  # fmt: skip
    where = f"{os.path.relpath(results_root / args.run, ROOT)}/ and {os.path.relpath(figures_root / args.run, ROOT)}/"
    print(f"run {args.run}: {_count(copied, 'file')} published to {where} ({unchanged} unchanged); "
          f"notebooks in {os.path.relpath(results_root / args.run / NOTEBOOKS_FOLDER, ROOT)}/, logs in {args.stage.rsplit('/', 1)[0]}/logs/")  # fmt: skip
    if _committed(results_root / args.run / "run.json"):
        print(f"run {args.run}: a committed run, rewritten by this rerun: `make verify RUN={args.run}` says whether it reproduced it; "
              f"`git checkout -- {where.replace(' and ', ' ')}` restores the committed files")  # fmt: skip
    return 0


def _committed(path: Path) -> bool:
    """Whether git tracks `path` (a published run that a rerun rewrites in place)."""
    try:
        done = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT, capture_output=True)
    except OSError:  # no git: an unpacked archive
        return False
    return done.returncode == 0


def _lock_path(run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir / ".publish.lock"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    key = commands.add_parser("key", help="write runs/<run>/inputs.json when an input changed")
    key.add_argument("--out", required=True)
    key.add_argument("--run", required=True)
    key.add_argument("--arch", default="tiny")
    key.add_argument("--model", default="")
    key.add_argument("--revision", default="")
    key.add_argument("--corpora", default="")
    key.add_argument("--seeds", default="")
    key.add_argument("--params-file", default="")
    key.add_argument("--dry-run", action="store_true", help="compare only (make -n): the key itself is left alone")
    key.set_defaults(handler=command_key)

    notebook = commands.add_parser("notebook", help="execute one notebook; one line on the terminal, the rest in its log")
    notebook.add_argument("source")
    notebook.add_argument("output")
    notebook.add_argument("--run", required=True)
    notebook.add_argument("-f", "--file", action="append", default=[], help="a YAML file of parameters")
    notebook.add_argument("-y", "--yaml", action="append", default=[], help="parameters as a YAML string (lists)")
    notebook.add_argument("-p", "--parameter", action="append", nargs=2, default=[], metavar=("NAME", "VALUE"))
    notebook.add_argument("--kernel", default="fisher-boundary")
    notebook.add_argument("--cwd", default="notebooks")
    notebook.add_argument("--prerequisites", nargs="*", default=[], help="make's $^: skip when the output is newer")
    notebook.set_defaults(handler=command_notebook)

    publish_parser = commands.add_parser("publish", help="copy a run's staged outputs into results/ and figures/")
    publish_parser.add_argument("--run", required=True)
    publish_parser.add_argument("--stage", required=True)
    publish_parser.add_argument("--notebooks", nargs="*", default=[])
    publish_parser.add_argument("--results-root", default="results")
    publish_parser.add_argument("--figures-root", default="figures")
    publish_parser.set_defaults(handler=command_publish)

    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"\n  interrupted: {args.command} {getattr(args, 'source', '') or args.run} stopped, nothing of it was published; "
              "`make reproduce` again resumes from what the cache holds", file=sys.stderr, flush=True)  # fmt: skip
        return 130


if __name__ == "__main__":
    sys.exit(main())
