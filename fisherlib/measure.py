"""The direction sweep over sampled positions: every boundary, predicted and empirical, in one long table."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import _checks
from .atomic import atomic_path
from .boundary import DEFAULT_MEMORY_BUDGET, _check_divergence, empirical_boundary, resolve_memory_budget
from .directions import direction_sweep
from .errors import InputError
from .fisher import _ROW_CHUNK, cumulant_boundary, cumulants, curvature, predicted_boundary
from .models import run_with_oom_backoff
from .progress import progress_bar

logger = logging.getLogger("fisherlib")

MEASUREMENT_COLUMNS = (
    "seed", "position", "direction", "cls", "eig_rank", "sign", "token_i", "token_j", "eigval", "eps",
    "curv_full", "curv_topk", "kappa3", "kappa4", "t_pred", "t_pred_full", "t_cumulant", "t_emp",
    "rho", "rho_full", "censored",
)  # fmt: skip


def measure_boundaries(
    W: torch.Tensor,
    b: torch.Tensor | None,
    h: torch.Tensor,
    eps_grid,
    top_k: int = 64,
    n_random: int = 20,
    n_control: int = 8,
    seed: int = 0,
    divergence: str = "forward",
    position_ids=None,
    t_max: float | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool = True,
) -> pd.DataFrame:
    """Return the long-form measurement table for residuals `h [P, d]` under the head `W [V, d]`, `b [V]`.

    One row per position × direction × ε, with the columns of `MEASUREMENT_COLUMNS` (SPEC §2–§5):
    curvatures `uᵀFu` and `uᵀF_k u`, cumulants κ₃ and κ₄ of `a = W u` under `p`, the closed forms
    (`t_pred` from `F_k`, `t_pred_full` from `F`, `t_cumulant` from the quartic Taylor series), the
    exact `t_emp` and `ρ = ½ t_emp² uᵀF_k u / ε` (and `rho_full`). Censored rows (`t_emp = inf`:
    zero curvature, a reverse-KL bound below ε, or beyond `t_max`) are kept, with `rho = inf`.
    Positions are processed in chunks so that the float64 `[chunk, D, V]` velocities stay within
    `memory_budget`; each position's random directions depend only on `(seed, position id)`.

    Inputs as in `fisherlib.fisher`: tensors or numpy arrays (converted with `torch.as_tensor`; `b`
    onto W's device, `h` may live elsewhere and is moved a chunk at a time). Raises InputError (a
    ValueError) before any work for another type or dtype, shapes that do not match (`W [V, d]`,
    `b [V]`, `h [P, d]`), NaN or inf, an ε that is not positive and finite, `top_k` outside `[1, V]`,
    an unknown divergence, `position_ids` that are not `P` values, or a non-positive `memory_budget`
    (None: a quarter of the free memory of W's device, see `boundary.resolve_memory_budget`).
    """
    W = _checks.tensor("W", W, "[V, d]", device=_checks.device_of(h))
    b = None if b is None else _checks.tensor("b", b, "[V]", device=W.device)
    h = _checks.tensor("h", h, "[P, d]")
    _checks.check_shapes(("W", W, "[V, d]"), ("b", b, "[V]"), ("h", h, "[P, d]"))
    _checks.check_same_device(("W", W), ("b", b))
    eps = _checks.check_eps(eps_grid, W.device)
    top_k = _checks.check_top_k(top_k, W.shape[0])
    _check_divergence(divergence)
    memory_budget = resolve_memory_budget(W.device, memory_budget)
    P = h.shape[0]
    position_ids = np.arange(P) if position_ids is None else np.asarray(position_ids)
    if position_ids.shape != (P,):
        raise InputError(f"position_ids must be P = {P} values, one per position, got shape {position_ids.shape}")
    b64 = None if b is None else b.double()
    n_directions = 2 * (7 + 6 + 7) + n_random + n_control  # upper bound, for the chunk size
    chunk = max(1, memory_budget // (4 * 8 * n_directions * W.shape[0]))
    bar = progress_bar(total=P, desc="direction sweep", unit="pos", disable=not progress)

    def measure_chunk(rows: list[int]) -> pd.DataFrame:
        h_chunk = h[rows].to(W.device).double()
        z = _times_rows(h_chunk, W)
        if b64 is not None:
            z = z + b64
        p = torch.softmax(z, -1)
        U, table = direction_sweep(
            W, h_chunk, p, n_random=n_random, n_control=n_control, seed=seed, top_k=top_k,
            position_ids=position_ids[rows],
        )  # fmt: skip
        A = _times_rows(U, W)  # logit velocities [chunk, D, V], float64
        curv_full = curvature(p, A)
        curv_topk = curvature(p, A, top_k=top_k)
        kappas = cumulants(p, A)
        t_emp = empirical_boundary(z, A, eps, divergence=divergence, t_max=t_max, memory_budget=memory_budget)
        columns = _boundary_columns(eps, curv_full, curv_topk, kappas, t_emp)
        table = table.loc[table.index.repeat(len(eps))].reset_index(drop=True)
        for name, values in columns.items():
            table[name] = values.reshape(-1).cpu().numpy()
        bar.update(len(rows))
        return table

    # Out of GPU memory on a chunk: retried with half as many positions (and the smaller size kept).
    tables = run_with_oom_backoff(measure_chunk, list(range(P)), chunk)
    bar.close()
    measurements = pd.concat(tables, ignore_index=True)
    measurements.insert(0, "seed", int(seed))
    return measurements[list(MEASUREMENT_COLUMNS)]


def _times_rows(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Return `x @ Wᵀ` in float64 (`x [..., d]` float64, `W [V, d]`), converting `_ROW_CHUNK` rows of W at a time.

    A float64 copy of the whole head would cost 8·V·d bytes (2.5 GB for Qwen3-1.7B) on top of W.
    """
    out = torch.empty(*x.shape[:-1], W.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, W.shape[0], _ROW_CHUNK):
        out[..., start : start + _ROW_CHUNK] = x @ W[start : start + _ROW_CHUNK].double().T
    return out


def _boundary_columns(eps, curv_full, curv_topk, kappas, t_emp) -> dict[str, torch.Tensor]:
    """Return the per-(position, direction, ε) columns, each `[P, D, E]`."""
    shape = t_emp.shape

    def per_eps(x):
        return x[..., None].expand(shape)

    def rho(curv):
        finite = torch.isfinite(t_emp)
        value = 0.5 * torch.where(finite, t_emp, 0.0) ** 2 * curv[..., None] / eps
        return torch.where(finite, value, torch.full_like(value, float("inf")))

    return dict(
        eps=eps.expand(shape),
        curv_full=per_eps(curv_full),
        curv_topk=per_eps(curv_topk),
        kappa3=per_eps(kappas[..., 1]),
        kappa4=per_eps(kappas[..., 2]),
        t_pred=predicted_boundary(curv_topk, eps),
        t_pred_full=predicted_boundary(curv_full, eps),
        t_cumulant=cumulant_boundary(kappas, eps),
        t_emp=t_emp,
        rho=rho(curv_topk),
        rho_full=rho(curv_full),
        censored=~torch.isfinite(t_emp),
    )


@dataclass
class Sweep:
    """A seed's positions (one row each) and its long-form measurements."""

    positions: pd.DataFrame
    measurements: pd.DataFrame


def sweep_path(params, seed: int) -> Path:
    """Return where the sweep of `params` for `seed` is cached."""
    key = params.key(
        "arch", "revision", "corpora", "render", "n_positions", "top_k", "max_context", "min_prefix", "pool_factor",
        "n_docs", "dtype", "eps_grid", "divergence", "n_random", "n_control",
    )  # fmt: skip
    return params.cache_path / f"sweep-seed{seed}-{key}.parquet"


def run_sweep(params, seed: int, progress: bool = True) -> Sweep:
    """Return the sweep for `seed`, measuring it (and sampling its positions) unless it is cached."""
    from .study import load_head, load_sample

    path = sweep_path(params, seed)
    if path.is_file():
        logger.info("sweep loaded from cache %s", path)
        return load_sweep(params, seed)
    sample = load_sample(params, seed)
    head = load_head(params)
    measurements = measure_boundaries(
        head.weight, head.bias, sample.h, params.eps_grid, top_k=params.top_k, n_random=params.n_random,
        n_control=params.n_control, seed=seed, divergence=params.divergence,
        position_ids=sample.table["position"].to_numpy(), progress=progress,
    )  # fmt: skip
    positions = sample.table.assign(seed=seed)
    # Positions first: the measurements file, written last, marks a complete entry.
    _write_parquet_atomically(positions, _positions_path(path))
    _write_parquet_atomically(measurements, path)
    logger.info("sweep written to %s", path)
    return Sweep(positions=positions, measurements=measurements)


def _write_parquet_atomically(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as partial:  # a unique temporary: two runs of one sweep never share it
        df.to_parquet(partial, index=False)


def _positions_path(path: Path) -> Path:
    return path.with_name(path.name.replace("sweep-", "sweep-positions-"))


def load_sweep(params, seed: int) -> Sweep:
    """Return the cached sweep for `seed`; raise FileNotFoundError saying which notebook makes it."""
    path = sweep_path(params, seed)
    if not path.is_file() or not _positions_path(path).is_file():
        raise FileNotFoundError(
            f"no sweep for run {params.name!r}, seed {seed} at {path}: run notebooks/03_direction_sweep.ipynb "
            f"with the same parameters first (make reproduce does; after deleting a cache, `rm -r runs/{params.name}` "
            "so that make reruns the notebooks that fill it)"
        )
    return Sweep(positions=pd.read_parquet(_positions_path(path)), measurements=pd.read_parquet(path))


def sweep_census(measurements: pd.DataFrame) -> pd.DataFrame:
    """Return, per class: directions per position, and the share of censored measurements per ε."""
    per_position = measurements.groupby(["seed", "position", "cls"], observed=True)["direction"].nunique()
    directions = per_position.groupby("cls", observed=True).median().rename("directions_per_position")
    censored = measurements.pivot_table(index="cls", columns="eps", values="censored", aggfunc="mean", observed=True)
    censored.columns = [f"censored at eps={e:g}" for e in censored.columns]
    return pd.concat([directions, censored], axis=1).reset_index(names="cls")


def plot_kl_profiles(head, sample, params, classes=("eigvec", "structured", "random", "control"), quantiles=(0.1, 0.9)):
    """Return a figure: exact divergence and its quadratic approximation along one direction per class.

    Two positions: those whose entropy sits nearest the `quantiles` of the sample (a peaked and a flat
    distribution; the extremes are often near-deterministic, where every curve is a wall). Each panel's
    x range reaches 1.1 times the farthest point where an exact curve of the non-control classes
    crosses the top of the plot (3 ε); the control direction, whose boundary can lie far beyond, says
    in the legend where it crosses ε.
    """
    import matplotlib.pyplot as plt

    from .boundary import empirical_boundary
    from .geometry import kl_profiles

    table = sample.table
    entropy = table["entropy"].to_numpy(float)
    chosen = list(dict.fromkeys(int(np.argmin(np.abs(entropy - np.quantile(entropy, q)))) for q in quantiles))
    y_top = 3 * params.large_eps
    fig, axes = plt.subplots(1, len(chosen), figsize=(5.6 * len(chosen), 5.0), sharey=True, squeeze=False)
    for ax, row in zip(axes[0], chosen):
        h = sample.h[row].to(head.weight.device).double()
        z = h @ head.weight.double().T + (0 if head.bias is None else head.bias.double())
        p = torch.softmax(z, -1)[None]
        U, meta = direction_sweep(
            head.weight.double(), h[None], p, n_random=1, n_control=1 if params.top_k < h.shape[0] else 0,
            seed=params.seed, top_k=params.top_k, position_ids=[int(table["position"].iloc[row])],
        )  # fmt: skip
        picks = [int(meta.index[(meta["cls"] == c) & (meta["sign"] == 1)][0]) for c in classes if (meta["cls"] == c).any()]
        names = [str(meta["cls"][d]) for d in picks]
        A = (U[0, picks] @ head.weight.double().T)[None]
        reach = empirical_boundary(z[None], A, [params.large_eps, y_top])[0].cpu().numpy()  # [D, 2]
        predicted = np.array([name != "control" for name in names])
        far = reach[predicted, 1] if predicted.any() else reach[:, 1]
        t_max = 1.1 * float(np.max(far[np.isfinite(far)])) if np.isfinite(far).any() else 1.0
        profiles = kl_profiles(head.weight, head.bias, sample.h[row], U[0, picks], np.linspace(0, t_max, 300))
        for j, name in enumerate(names):
            line = profiles[profiles["direction"] == j]
            label = name
            if name == "control":
                label += f" (reaches ε at t = {reach[j, 0]:.3g})"
            ax.plot(line["t"], line["kl"], color=f"C{j}", label=label)
            ax.plot(line["t"], line["quadratic"], color=f"C{j}", linestyle="--")
        ax.axhline(params.large_eps, color="grey", linewidth=1)
        ax.set(
            ylim=(0, y_top), xlim=(0, t_max), xlabel="distance t along u [residual-stream units]",
            title=f"position {int(table['position'].iloc[row])}, H(p) = {entropy[row]:.2f} nats",
        )  # fmt: skip
        ax.legend(title="solid: exact; dashed: ½t²uᵀFu", fontsize="small", title_fontsize="small", ncol=2,
                  loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)  # fmt: skip
    axes[0][0].set_ylabel("KL(p ‖ q_t) [nats]")
    fig.tight_layout()
    return fig
