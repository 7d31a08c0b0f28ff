"""Each measurement step of the study, from the run's parameters, cached under the key of what it depends on.

A cache entry is named by a hash of every parameter its measurement reads (`StudyParams.key`), so a
changed parameter makes a new entry and an unchanged one is read back. Entries are written atomically
with their checksums (`fisherlib.io.cache`), so an interrupted run resumes and an entry that no longer
verifies (truncated, altered) is reported in one line and recomputed. The measurements
themselves live in `fisherlib.steps`; this module only finds their inputs and keeps their outputs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ..io.cache import write_file, write_folder
from ..io.progress import progress as progress_iter
from ..io.shards import WHOLE, Shard
from ..layers.engine import check_layer, default_layers, residuals_by_layer
from ..layers.passes import EnginePath, Prefilled, engine_path
from ..steps import dynamics, effective_dimension, jacobian_lens, layer_study, plateaus
from ..steps.sweep import measure_boundaries
from .inputs import SAMPLE_KEYS, load_head, load_model_for, load_sample, read_entry, wrote_entry

logger = logging.getLogger("fisherlib")


# --- notebook 03: the direction sweep ---------------------------------------------------------------


@dataclass
class Sweep:
    """A seed's positions (one row each) and its long-form measurements."""

    positions: pd.DataFrame
    measurements: pd.DataFrame


def sweep_path(params, seed: int) -> Path:
    """Return where the sweep of `params` for `seed` is cached."""
    key = params.key(*SAMPLE_KEYS, "eps_grid", "divergence", "n_random", "n_control")
    return params.cache_path / f"sweep-seed{seed}-{key}.parquet"


def run_sweep(params, seed: int, progress: bool = True) -> Sweep:
    """Return the sweep for `seed`, measuring it (and sampling its positions) unless it is cached."""
    path = sweep_path(params, seed)
    cached = _cached_sweep(params, path)
    if cached is not None:
        return cached
    sample = load_sample(params, seed)
    head = load_head(params)
    measurements = measure_boundaries(
        head.weight, head.bias, sample.h, params.eps_grid, top_k=params.top_k, n_random=params.n_random,
        n_control=params.n_control, seed=seed, divergence=params.divergence,
        position_ids=sample.table["position"].to_numpy(), progress=progress,
    )  # fmt: skip
    positions = sample.table.assign(seed=seed)
    _write_parquet(positions, _positions_path(path))
    _write_parquet(measurements, path)
    wrote_entry(f"direction sweep (seed {seed})", path)
    return Sweep(positions=positions, measurements=measurements)


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    # A unique temporary, then the checksum: two runs of one sweep never share a file, and a reader
    # never takes a partial one.
    write_file(path, lambda file: df.to_parquet(file, index=False))


def _read_parquet(params, path: Path, what: str) -> pd.DataFrame | None:
    return read_entry(params, path.name, pd.read_parquet, what)


def _cached_sweep(params, path: Path) -> Sweep | None:
    what = path.stem.split("-")[1]
    positions = _read_parquet(params, _positions_path(path), f"sweep positions ({what})")
    measurements = _read_parquet(params, path, f"direction sweep ({what})")
    return None if positions is None or measurements is None else Sweep(positions, measurements)


def _positions_path(path: Path) -> Path:
    return path.with_name(path.name.replace("sweep-", "sweep-positions-"))


def load_sweep(params, seed: int) -> Sweep:
    """Return the cached sweep for `seed` (this run's or a published run's); raise FileNotFoundError if none has it.

    Notebooks call `run_sweep`, which measures what no cache holds; this is for code that must not measure.
    """
    path = sweep_path(params, seed)
    cached = _cached_sweep(params, path)
    if cached is None:
        raise FileNotFoundError(
            f"no sweep for run {params.name!r}, seed {seed} at {path} nor in a published run's cache: "
            "`fisherlib.run.measurements.run_sweep` measures it"
        )
    return cached


# --- notebook 08: the layer study -------------------------------------------------------------------


def run_layer_study(params, seed: int | None = None, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return `(measurements, positions)` of notebook 08 for `params`, cached beside the run's sample.

    `positions` holds the measured subset of the sample (`params.layer_positions`, spread over domains
    and strata). The measurements are cached as parquet, keyed by every parameter they depend on.
    """
    seed = params.seed if seed is None else seed
    path = layer_cache_file(params, seed)
    sample, rows = layer_study_rows(params, seed, progress)
    positions = sample.table.iloc[rows].reset_index(drop=True)
    cached = _read_parquet(params, path, f"layer measurements (seed {seed})")
    if cached is not None:
        return cached, positions
    measurements = measure_layer_rows(params, seed, sample, rows)
    _write_parquet(measurements, path)
    wrote_entry(f"layer measurements (seed {seed})", path)
    run_layer_engine(params, seed)  # recorded beside them: which engine measured them
    return measurements, positions


def layer_study_rows(params, seed: int, progress: bool = True):
    """Return `(sample, rows [n])`: the run's sample and the rows of it that the layer study measures, in order."""
    sample = load_sample(params, seed, progress=progress)
    return sample, layer_study.choose_positions(sample.table, params.layer_positions, seed)


def measure_layer_rows(params, seed: int, sample, rows) -> pd.DataFrame:
    """Return the layer study's measurements (every layer, then `rows` in order) of the sample's `rows`.

    A row's numbers depend on the other rows only through its batch (`params.batch_size` consecutive
    rows, as `Prefilled` cuts them), so whole batches of the study's rows measured apart give its table.
    Every row needs the residuals of the whole sample (their covariance and activation differences).
    """
    model = load_model_for(params)
    layers = list(params.layers) or default_layers(model)
    residuals = residuals_by_layer(model, sample, layers, batch_size=params.batch_size)
    prefilled = Prefilled(model, [sample.context_ids[i] for i in rows], batch_size=params.batch_size)
    doc_ids = (sample.table["domain"].astype(str) + "/" + sample.table["doc_id"].astype(str)).to_numpy()
    parts = []
    for layer in progress_iter(layers, desc=f"layer study, {len(rows)} positions", unit="layer"):
        logger.info("layer %s: %d positions", layer_study.layer_label(layer), len(rows))
        parts.append(
            layer_study.measure_layer(
                model,
                prefilled,
                layer,
                residuals[layer],
                rows,
                doc_ids,
                sample.table["position"].to_numpy(),
                params.eps_grid,
                n_eig=params.layer_eig,
                n_per_class=params.layer_per_class,
                top_k=params.top_k,
                seed=seed,
                divergence=params.divergence,
                rtol=params.layer_rtol,
                batch_size=params.batch_size,
            )  # fmt: skip
        )
    return pd.concat(parts, ignore_index=True)


def run_layer_engine(params, seed: int | None = None) -> EnginePath:
    """Return which layer engine evaluates `params`' model (notebook 08 says it), cached beside the layer measurements.

    Read from the run's cache or a published run's (as every entry is), else probed on the model
    (`fisherlib.layers.passes.engine_path`) and written to the run's cache.
    """
    seed = params.seed if seed is None else seed
    path = layer_cache_file(params, seed).with_suffix(".engine.json")
    cached = read_entry(params, path.name, lambda file: json.loads(file.read_text()), f"layer engine (seed {seed})")
    if cached is not None:
        return EnginePath(**cached)
    engine = engine_path(load_model_for(params), params.max_context)
    write_file(path, lambda file: file.write_text(json.dumps(dataclasses.asdict(engine), sort_keys=True) + "\n"))
    return engine


def run_layer_spectra(params, seed: int | None = None, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return `(spectra, lens)` of notebook 08: the full spectrum of `G_ℓ` and the averaged Jacobian lens, per layer.

    The positions are `params.layer_dense_positions` of the layer study's, spread over domains and strata
    as those are; `G_ℓ` is formed densely, `d` JVPs
    per position and layer, in one pass that also sums the basis velocities per fold for the held-out
    lens (`jacobian_lens.measure_lens`). `spectra`: `effective_dimension.SPECTRUM_COLUMNS` per (layer,
    position); `lens`: one row per (layer, position, random direction of the layer study). Cached as
    parquet beside the run's sample.
    """
    entries = _dense_layer_pass(params, seed, progress)
    return entries["spectra"], entries["lens"]


def run_lens_top_eigvec(params, seed: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Return notebook 08's lines along `±` the top eigenvector of the held-out lens `Ḡ_ℓ`, every layer and ε.

    The positions and the dense pass are `run_layer_spectra`'s (whichever of the two runs first measures
    both); the exact boundaries are `layer_boundary`'s at `eps_grid` to `layer_rtol`, as the layer
    study's. Rows: `jacobian_lens.LENS_TOP_COLUMNS`. Cached as parquet beside the run's sample.
    """
    return _dense_layer_pass(params, seed, progress)["lens-top-eigvec"]


def dense_layer_cache_files(params, seed: int) -> dict[str, Path]:
    """Return where the dense pass caches each of its products (keyed by what that product depends on; for tests and clean-ups)."""
    positions = (*SAMPLE_KEYS, "layers", "layer_positions", "layer_dense_positions")
    keys = {
        "spectra": params.key(*positions, "layer_per_class"),
        "lens": params.key(*positions, "layer_per_class"),
        "lens-top-eigvec": params.key(*positions, "eps_grid", "divergence", "layer_rtol"),
    }
    return {name: params.cache_path / f"layer-{name}-seed{seed}-{key}.parquet" for name, key in keys.items()}


def _dense_layer_pass(params, seed: int | None, progress: bool) -> dict[str, pd.DataFrame]:
    """Return every product of notebook 08's dense pass, read from the cache or, if any is missing, all measured at once.

    One pass of `d` JVPs per position and layer gives `G_ℓ` and the lens `Ḡ_ℓ`, from which come the spectra,
    the lens's scores on the random directions and the lens's top eigenvector; only the missing entries are
    written (the others were read and stay as they are).
    """
    seed = params.seed if seed is None else seed
    paths = dense_layer_cache_files(params, seed)
    cached = {name: _read_parquet(params, path, f"layer {name} (seed {seed})") for name, path in paths.items()}
    if all(frame is not None for frame in cached.values()):
        return cached
    sample = load_sample(params, seed, progress=progress)
    rows = layer_study.choose_positions(sample.table, params.layer_positions, seed)
    rows = rows[layer_study.choose_positions(sample.table.iloc[rows], params.layer_dense_positions, seed)]
    model = load_model_for(params)
    layers = list(params.layers) or default_layers(model)
    # Each layer's own width: the residual stream can be wider than the head's input (OPT's word_embed_proj_dim).
    widths = {layer: int(r.shape[-1]) for layer, r in residuals_by_layer(model, [sample.context_ids[rows[0]]], layers).items()}
    prefilled = Prefilled(model, [sample.context_ids[i] for i in rows], batch_size=params.batch_size)
    position_ids = sample.table["position"].to_numpy()[rows]
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in paths}
    for layer in progress_iter(layers, desc=f"dense G and lens, {len(rows)} positions", unit="layer", disable=not progress):
        logger.info("layer %s: dense G and the averaged lens at %d positions", layer_study.layer_label(layer), len(rows))
        lens, G, G_bar = jacobian_lens.measure_lens(
            model, prefilled, layer, widths[check_layer(model, layer)], position_ids, params.layer_per_class, seed=seed,
            batch_size=params.batch_size, return_lens_metric=True,
        )  # fmt: skip
        summary = effective_dimension.spectrum_summary(torch.linalg.eigvalsh(G))
        summary.insert(0, "position", position_ids)
        summary.insert(0, "layer", layer_study.layer_label(layer))
        parts["spectra"].append(summary[list(effective_dimension.SPECTRUM_COLUMNS)])
        parts["lens"].append(lens)
        if cached["lens-top-eigvec"] is None:  # its key has eps_grid, divergence, layer_rtol: it may be missing alone, or present alone
            parts["lens-top-eigvec"].append(jacobian_lens.measure_lens_top_eigvec(
                model, prefilled, layer, G, G_bar, position_ids, params.eps_grid, divergence=params.divergence,
                rtol=params.layer_rtol, batch_size=params.batch_size,
            ))  # fmt: skip
    for name, path in paths.items():
        if cached[name] is None:
            cached[name] = pd.concat(parts[name], ignore_index=True)
            _write_parquet(cached[name], path)
            wrote_entry(f"layer {name} (seed {seed})", path)
    return cached


def layer_cache_file(params, seed: int) -> Path:
    """Return where `run_layer_study` caches its measurements (for tests and clean-ups)."""
    key = params.key(*SAMPLE_KEYS, "eps_grid", "divergence", "layers", "layer_positions", "layer_eig", "layer_per_class", "layer_rtol", "top_k")
    return params.cache_path / f"layers-seed{seed}-{key}.parquet"


# --- notebook 09: interpolation plateaus -----------------------------------------------------------


def run_plateaus(params, seed: int | None = None, progress: bool = True):
    """Return `(pairs, points, steps)` of notebook 09 for `params` (cached beside the run's sample)."""
    seed = params.seed if seed is None else seed
    key = params.key(*SAMPLE_KEYS, "plateau_layer", "plateau_pairs", "plateau_steps")
    base = params.cache_path / f"plateaus-seed{seed}-{key}"
    sample = load_sample(params, seed, progress=progress)
    pairs = plateaus.choose_pairs(sample.table, params.plateau_pairs, seed)
    pairs = pairs.assign(position_a=sample.table["position"].to_numpy()[pairs["a"]], position_b=sample.table["position"].to_numpy()[pairs["b"]])
    points, steps = (
        _read_parquet(params, base.with_name(base.name + suffix), f"interpolation paths ({suffix[1:6]}, seed {seed})")
        for suffix in (".points.parquet", ".steps.parquet")
    )
    if points is not None and steps is not None:
        return pairs, points, steps
    model = load_model_for(params)
    layer = check_layer(model, params.plateau_layer)
    residuals = residuals_by_layer(model, sample, [layer], batch_size=params.batch_size)[layer]
    alphas = torch.linspace(0, 1, params.plateau_steps, dtype=torch.float64)
    logger.info("layer %s: %d pairs × %d paths × %d points", layer, len(pairs), len(plateaus.PATHS), len(alphas))
    points, steps = plateaus.measure_paths(model, sample, pairs, layer, residuals.double().mean(0), residuals.double(), alphas)
    for frame, suffix in ((points, ".points.parquet"), (steps, ".steps.parquet")):
        _write_parquet(frame, base.with_name(base.name + suffix))
    wrote_entry(f"interpolation paths (seed {seed})", base)
    return pairs, points, steps


# --- notebook 10: training dynamics, one cache entry per revision ----------------------------------


def measure_revision(params, sample, revision: str, seed: int, reference_model=None, progress: bool = True) -> dynamics.RevisionMeasurement:
    """Return `dynamics.measure_checkpoint` of `params`' model at `revision`, cached per revision.

    Measured at `params.small_eps` and `params.large_eps` (the two ε the dynamics tables use). A
    revision whose tokenizer differs from `reference_model`'s is refused.
    """
    path = revision_cache_folder(params, revision, seed)
    cached = read_entry(params, path.name, lambda folder: dynamics.RevisionMeasurement(
        revision, dynamics.revision_step(revision), pd.read_parquet(folder / "positions.parquet"),
        pd.read_parquet(folder / "measurements.parquet"),
    ), f"revision {revision}", folder=True)  # fmt: skip
    if cached is not None:
        return cached
    model = load_model_for(params, revision=revision)
    if reference_model is not None:
        dynamics.check_same_tokenizer(model, reference_model)
    result = dynamics.measure_checkpoint(
        model, sample, revision, seed, eps_grid={params.small_eps, params.large_eps}, top_k=params.top_k,
        n_random=params.n_random, n_control=params.n_control, divergence=params.divergence,
        batch_size=params.batch_size, progress=progress,
    )  # fmt: skip
    _write_revision(path, result.positions, result.measurements)
    wrote_entry(f"revision {revision}", path)
    return result


def revision_cache_folder(params, revision: str, seed: int) -> Path:
    key = params.key(*SAMPLE_KEYS, "small_eps", "large_eps", "divergence", "n_random", "n_control")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", revision)
    return params.cache_path / f"dynamics-{safe}-seed{seed}-{key}"


def _write_revision(folder: Path, positions: pd.DataFrame, measurements: pd.DataFrame) -> None:
    """Write both tables into a sibling temporary folder and rename it into place (a rerun resumes here)."""

    def write(staging: Path) -> None:
        positions.to_parquet(staging / "positions.parquet", index=False)
        measurements.to_parquet(staging / "measurements.parquet", index=False)

    # Another process that wrote the same revision first keeps its copy: it is identical.
    write_folder(folder, write)


# --- notebook 11: the steering budget ----------------------------------------------------------------

STEERING_TABLES = ("vectors", "tokens", "population", "generated", "natural", "prompts")


def steering_layer(params, model):
    """Return the layer notebook 11 steers: `steer_layer`, or the middle block boundary when it is -1."""
    from ..layers.engine import n_layers
    from ..layers.steering_pass import check_steering_layer

    return check_steering_layer(model, n_layers(model) // 2 if params.steer_layer == -1 else params.steer_layer)


def run_steering(params, seed: int | None = None, progress: bool = True, shard: Shard = WHOLE) -> dict[str, pd.DataFrame]:
    """Return notebook 11's long tables (`steering_study.measure_steering`) for `params`, cached as one folder entry.

    With a `shard` of several processes (`fisherlib.run.distributed`), each measures its share of the
    vectors and the first writes the entry.
    """
    from ..steps import steering_study

    seed = params.seed if seed is None else seed
    key = params.key(*SAMPLE_KEYS, "steer_layer", "steer_texts", "steer_tokens", "steer_eps", "steer_quantile",
                     "steer_random", "steer_target_tokens", "steer_target_gain", "steer_generate")  # fmt: skip
    folder = params.cache_path / f"steering-seed{seed}-{key}"

    def read(path: Path) -> dict[str, pd.DataFrame]:
        return {name: pd.read_parquet(path / f"{name}.parquet") for name in STEERING_TABLES}

    cached = read_entry(params, folder.name, read, f"steering budgets (seed {seed})", folder=True)
    if cached is not None:
        return cached
    sample = load_sample(params, seed, progress=progress)
    model = load_model_for(params)
    head = load_head(params)
    logits = sample.h.double() @ head.weight.double().T
    if head.bias is not None:
        logits = logits + head.bias.double()
    tables = steering_study.measure_steering(
        model, sample, torch.softmax(logits, -1), steering_layer(params, model), params.steer_eps, params.steer_quantile,
        params.steer_texts, params.steer_tokens, params.steer_random, params.top_k, params.steer_target_tokens,
        params.steer_target_gain, seed, batch_size=params.batch_size, log=logger.info, shard=shard, n_generate=params.steer_generate,
    )  # fmt: skip

    def write(staging: Path) -> None:
        for name in STEERING_TABLES:
            tables[name].to_parquet(staging / f"{name}.parquet", index=False)

    if shard.rank == 0:
        write_folder(folder, write)
        wrote_entry(f"steering budgets (seed {seed})", folder)
    return tables
