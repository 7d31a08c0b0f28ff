"""The notebooks' parameters: `StudyParams`, validated, and where a run's outputs go.

Every notebook starts with a papermill `parameters` cell that holds the run's identity (`RUN_IDENTITY`)
and the parameters that notebook reads (`fisherlib.run.parameter_docs.notebook_cell_names`), and then
calls `params = StudyParams.from_namespace(globals())`, which fills every other parameter with its default
(or with papermill's value: `make` passes every notebook every parameter), refuses a name that is no
parameter of any notebook, checks every value's type and says what to fix. Tables go to `results/<run>/` (CSV and Markdown, with the parameters that made them), figures
to `figures/<run>/` (PNG and PDF), caches to `results/<run>/cache/`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ParameterError
from ..data.corpora import duplicate_domains, duplicate_domains_message
from ..io.locations import repo_root

ARCH_DEFAULT_CORPORA = {
    "tiny": ["stdlib-code", "stdlib-docs"],
}
HUB_CORPORA = ["gsm8k", "codeparrot", "ultrachat", "wikitext"]
SCRATCH_RUN = "scratch"
# Where outputs go, not what they hold: left out of the parameters every table and figure records, so a
# run staged under runs/<run>/ and published to results/<run>/ records the same header.
OUTPUT_LOCATION_FIELDS = ("results_root", "figures_root", "cache_dir")
# What identifies a run: every notebook's parameters cell shows these, whether or not the notebook reads them.
RUN_IDENTITY = ("arch", "revision", "run_name", "corpora", "seed", "device", "dtype")


@dataclass(frozen=True)
class StudyParams:
    """The parameters every notebook takes (docs/method.md §15), validated."""

    arch: str = "tiny"
    revision: str = ""  # the model's revision: a hub branch, tag or commit, or tiny's "step<N>"; empty: the final model
    run_name: str = ""  # where tables and figures go (results/<run_name>/); empty: "scratch" (make passes the run's name)
    corpora: list = field(default_factory=list)  # empty: the architecture's defaults
    render: str = "plain"  # dialogue rendering: "plain" User:/Assistant: text or the model's "chat" template
    n_positions: int = 400
    seed: int = 0
    seeds: list = field(default_factory=list)  # empty: [seed]; several repeat sampling and sweep (Table 1)
    top_k: int = 64
    eps_grid: list = field(default_factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 2.0, 5.0])
    small_eps: float = 0.01  # "small ε" of Table 1
    large_eps: float = 1.0  # the ε of Table 2 and of the calibration headline
    divergence: str = "forward"
    n_random: int = 20
    n_control: int = 8
    device: str = ""  # empty: cuda when available, else cpu
    dtype: str = ""  # empty: bfloat16 on cuda, float32 on cpu
    batch_size: int = 16
    max_context: int = 256
    min_prefix: int = 8
    pool_factor: int = 4
    n_docs: int = 0  # documents read per corpus; 0: enough for the pool
    cache_dir: str = ""  # empty: results/<run>/cache; relative paths start at the repository root
    results_root: str = "results"
    figures_root: str = "figures"
    # --- analysis choices (notebooks 04-07) ---
    calibration_space: str = "linear"  # isotonic fit of t_emp on t_pred ("linear", the write-up's) or of their logs ("log")
    resample_unit: str = "document"  # what bootstrap CIs and CV folds resample: "position" or "document"
    # --- notebook 08/09: the layer pullback ---
    layers: list = field(default_factory=list)  # empty: every block boundary 0..n_layers and "head"
    layer_positions: int = 48  # positions measured at every layer (notebook 08); 0: all of them
    layer_eig: int = 2  # top eigenvectors of G_ℓ per position, each with both signs
    layer_per_class: int = 3  # random, residual-covariance and activation-difference directions per position
    layer_rtol: float = 1e-4  # relative accuracy asked of t_emp at inner layers (float32 logits allow about 1e-4)
    layer_dense_positions: int = 24  # of those, positions where G_ℓ is formed densely (d JVPs each: effective dimension, averaged lens); 0: all
    plateau_layer: int = 1  # where notebook 09 interpolates (the residual entering this block)
    plateau_pairs: int = 64  # prompt pairs, each along the straight path and the arc
    plateau_steps: int = 81  # grid points α in [0, 1]
    plateau_jump: float = 4.0  # a grid step is a jump when its output change is at least this many times the path's median step
    # --- notebook 10: training dynamics ---
    revisions: list = field(default_factory=list)  # checkpoints to walk; empty: every saved checkpoint of tiny
    # --- notebook 11: a KL budget for activation steering ---
    steer_layer: int = -1  # the residual entering this block is steered; -1: the middle one, n_layers // 2
    steer_texts: int = 8  # prompts of the steering prompt set (one per document, round-robin over domains)
    steer_tokens: int = 32  # each prompt's first tokens (every one of them is steered and measured)
    steer_eps: list = field(default_factory=lambda: [0.1, 1.0])  # the budgets' ε (nats of per-token KL)
    steer_quantile: float = 0.95  # the population budget: this quantile of per-token KL reaches ε
    steer_random: int = 1  # random unit vectors among the steering vectors (the control)
    steer_target_tokens: int = 8  # the target set of the equal-effect comparison: tokens characteristic of the first domain
    steer_target_gain: float = 0.5  # the target effect: mean gain in log q(target set), nats
    steer_generate: int = 8  # greedy tokens generated after each prompt for the generated-text budget (0: not measured)

    @classmethod
    def from_namespace(cls, namespace: dict[str, Any]) -> StudyParams:
        """Build from a notebook's globals: pick the known names, check their types, fill defaults.

        In a kernel, the cells run so far (IPython's `In`) are read too: a name assigned in the parameters
        cell or in papermill's injected cell that is not a parameter (`n_postions = 100`) is refused, since
        it would otherwise be ignored silently.
        """
        check_parameter_names(parameter_cell_names(namespace.get("In") or []))
        values = {f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.name in namespace}
        return cls.create(**values)

    @classmethod
    def create(cls, **values: Any) -> StudyParams:
        """Build from keyword values, converting where safe and refusing wrong types with a clear message."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        check_parameter_names(values)
        checked = {name: _check_type(name, value, fields[name]) for name, value in values.items()}
        params = cls(**checked)
        params._check_values()
        return params

    def _check_values(self) -> None:
        problems = []
        if self.n_positions < 5:
            problems.append("n_positions must be at least 5 (one per effective-rank quintile)")
        if self.top_k < 2:
            problems.append("top_k must be at least 2")
        if not self.eps_grid or any(e <= 0 for e in self.eps_grid):
            problems.append("eps_grid must be a non-empty list of positive numbers")
        if self.divergence not in ("forward", "reverse"):
            problems.append("divergence must be 'forward' or 'reverse'")
        if self.render not in ("plain", "chat"):
            problems.append("render must be 'plain' or 'chat'")
        if self.calibration_space not in ("linear", "log"):
            problems.append("calibration_space must be 'linear' or 'log'")
        if self.resample_unit not in ("position", "document"):
            problems.append("resample_unit must be 'position' or 'document'")
        for name in ("batch_size", "max_context", "pool_factor"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive")
        if self.min_prefix < 1 or self.min_prefix >= self.max_context:
            problems.append("min_prefix must be at least 1 and below max_context")
        if self.layer_dense_positions == 1:
            problems.append("layer_dense_positions must be 0 or at least 2 (the averaged lens is held out over folds)")
        for name in ("layer_positions", "layer_dense_positions", "layer_eig", "layer_per_class", "plateau_layer", "plateau_pairs"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be at least 0")
        if self.layer_eig + self.layer_per_class < 1:
            problems.append("layer_eig and layer_per_class cannot both be 0 (no directions at all)")
        if not 0 < self.layer_rtol < 0.1:
            problems.append("layer_rtol must lie in (0, 0.1)")
        if self.plateau_steps < 5:
            problems.append("plateau_steps must be at least 5")
        if self.plateau_jump <= 1:
            problems.append("plateau_jump must exceed 1 (a jump is larger than the mean step)")
        if self.steer_layer < -1:
            problems.append("steer_layer must be a block index, or -1 for the middle block")
        for name, least in (("steer_texts", 1), ("steer_tokens", 2), ("steer_random", 0), ("steer_target_tokens", 1), ("steer_generate", 0)):
            if getattr(self, name) < least:
                problems.append(f"{name} must be at least {least}")
        if not self.steer_eps or any(e <= 0 for e in self.steer_eps):
            problems.append("steer_eps must be a non-empty list of positive numbers")
        if not 0 < self.steer_quantile < 1:
            problems.append("steer_quantile must lie in (0, 1)")
        if self.steer_target_gain <= 0:
            problems.append("steer_target_gain must be positive (nats of log-probability gained)")
        if self.run_name and (not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", self.run_name)):
            problems.append(f"run_name={self.run_name!r} must be a folder name (letters, digits, '_', '.', '-')")
        duplicated = duplicate_domains(self.corpus_list)
        if duplicated:
            problems.append(duplicate_domains_message(duplicated).removesuffix("."))
        if self.small_eps not in self.eps_grid or self.large_eps not in self.eps_grid:
            problems.append(f"small_eps={self.small_eps} and large_eps={self.large_eps} must be in eps_grid")
        if problems:
            raise ParameterError("; ".join(problems))

    # --- derived values -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Return the run's name: `run_name`, else `scratch`.

        A notebook opened by hand (or run by papermill without `run_name`) writes to the scratch run, so
        it never overwrites a run made by `make reproduce`, which always passes the run's name.
        """
        return self.run_name or SCRATCH_RUN

    @property
    def seed_list(self) -> list[int]:
        """Return the seeds to run: `seeds`, or `[seed]`."""
        return list(self.seeds) if self.seeds else [self.seed]

    @property
    def corpus_list(self) -> list[str]:
        """Return the corpora to sample: `corpora`, else the architecture's defaults."""
        if self.corpora:
            return [_resolve_corpus_path(spec) for spec in self.corpora]
        return ARCH_DEFAULT_CORPORA.get(self.arch, HUB_CORPORA)

    @property
    def results_dir(self) -> Path:
        return _under_root(self.results_root) / self.name

    @property
    def figures_dir(self) -> Path:
        return _under_root(self.figures_root) / self.name

    @property
    def cache_path(self) -> Path:
        return _under_root(self.cache_dir) if self.cache_dir else self.results_dir / "cache"

    def as_dict(self) -> dict[str, Any]:
        """Return the parameters as plain values (what every output records)."""
        return dataclasses.asdict(self)

    def key(self, *names: str) -> str:
        """Return a short hash of the named parameters (the cache key of a step that depends on them)."""
        chosen = {name: getattr(self, name) for name in names}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]


def parameter_names() -> list[str]:
    """Return the name of every notebook parameter (every notebook accepts them all; its cell shows its own)."""
    return [f.name for f in dataclasses.fields(StudyParams)]


def check_parameter_names(names) -> None:
    """Raise ParameterError (one line) naming each of `names` that is not a parameter, with the closest known one."""
    known = parameter_names()
    unknown = sorted(set(names) - set(known))
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise ParameterError(
        f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: nothing was run. "
        "The notebooks' parameters are listed in docs/parameters.md."
    )


def parameter_cell_names(cells) -> list[str]:
    """Return the names assigned in those of `cells` (sources) that are parameter cells.

    A parameter cell is papermill's injected `# Parameters` cell, or a cell (the notebook's `parameters`
    cell) that holds only assignments of literals to names, at least one of them a parameter; analysis
    cells, which compute their values, are never taken for one.
    """
    known = set(parameter_names())
    names: list[str] = []
    for source in cells:
        try:
            body = ast.parse(source).body
        except SyntaxError:
            continue
        targets = []
        for statement in body:
            if not (isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets)):
                break
            try:
                ast.literal_eval(statement.value)
            except ValueError:
                break
            targets += [t.id for t in statement.targets]
        else:
            # papermill's injected cell opens with this comment, and may hold only misspelled names.
            if known & set(targets) or source.startswith("# Parameters\n"):
                names += targets
    return names


def parameters_cell_source(names=None) -> str:
    """Return the source of a `parameters` cell: each of `names` (default: every field) at its default, in declaration order.

    `python tools/sync_parameters.py` writes each notebook's (its `parameter_docs.notebook_cell_names`); a test
    checks they match.
    """
    defaults = StudyParams()
    chosen = set(parameter_names() if names is None else names)
    check_parameter_names(chosen)
    return "\n".join(f"{f.name} = {_python_literal(getattr(defaults, f.name))}" for f in dataclasses.fields(StudyParams) if f.name in chosen)


def _python_literal(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _resolve_corpus_path(spec: str) -> str:
    """Return `spec` with a relative file path made absolute against the repository root.

    Notebooks run with the `notebooks/` folder as working directory, while paths on the `make` command
    line are written from the repository root.
    """
    domain, sep, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and not candidate.exists() and (repo_root() / candidate).exists():
        return f"{domain}{sep}{repo_root() / candidate}"
    return spec


def _under_root(path: str) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else repo_root() / candidate


def _check_type(name: str, value: Any, spec: dataclasses.Field) -> Any:
    """Return `value` converted to the field's type, or raise ParameterError saying what was expected."""
    default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
    expected = type(default)
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif expected is str:
        if value is None:
            return ""
        if isinstance(value, (str, os.PathLike)):
            return str(value)
    elif expected is list:
        if value is None:
            return []
        if isinstance(value, (list, tuple)):
            item_type = type(default[0]) if default else None
            items = list(value)
            if item_type is float and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
                return [float(v) for v in items]
            if name == "seeds" and all(isinstance(v, int) and not isinstance(v, bool) for v in items):
                return items
            if name in ("corpora", "revisions") and all(isinstance(v, str) for v in items):
                return items
            if name == "layers" and all(_is_layer(v) for v in items):
                return [v if isinstance(v, int) else int(v) if v.isdigit() else v for v in items]
        if name in ("corpora", "revisions") and isinstance(value, str):
            return value.split()
        if name == "layers" and isinstance(value, str) and all(_is_layer(part) for part in value.split()):
            return [int(part) if part.isdigit() else part for part in value.split()]
        if name == "seeds" and isinstance(value, str) and all(part.isdigit() for part in value.split()):
            return [int(part) for part in value.split()]
    how = f'-y "{name}: {json.dumps(default)}"' if expected is list else f"-p {name} {default!r}"
    raise ParameterError(
        f"parameter {name}={value!r} has type {type(value).__name__}; expected {_describe(name, expected)} "
        f"(default {default!r}). Fix it in the notebook's parameters cell, the params/*.yaml file, or papermill's "
        f"{how}."
    )


def _is_layer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return (isinstance(value, int) and value >= 0) or (isinstance(value, str) and (value.isdigit() or value == "head"))


def _describe(name: str, expected: type) -> str:
    return {
        "layers": 'a list of block boundaries (integers from 0) and "head"',
        "revisions": 'a list of revisions ("step1000", ...)',
        "eps_grid": "a list of positive numbers",
        "seeds": "a list of integers",
        "corpora": "a list of corpus names or file paths",
    }.get(name, expected.__name__)
