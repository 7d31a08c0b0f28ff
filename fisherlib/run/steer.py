"""`fisherlib steer`: the KL budget of a steering vector on disk, for a model id and a prompt file.

    fisherlib steer --model tiny --layer 2 --vector v.safetensors --prompts prompts.txt --eps 0.5 1

prints, for every ε (and method), the α at which the `quantile` of per-token KL over every token of the
prompts reaches ε (`steering_scale`), or, with `--generate W`, over W generated tokens per prompt
(`generated_steering.generated_scale`), and what it cost. α is in units of the vector as stored (the push
is `α v`; the vector is never normalised); `|αv|` is the push's norm `α‖v‖`, and `relative` that norm over
the mean residual norm `‖r_ℓ‖` at the layer on the prompts (every token but each prompt's first). Vector
files are read by `fisherlib.io.vectors.load_vector` (`.pt`, `.npy`, `.safetensors`, repeng's control-vector
GGUF, whose `direction.{i}` is our layer `i + 1`). Bad input stops with one line (InputError, exit status 2).

Only argparse is imported here at start-up; the model and torch load when the command runs.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..steps.generated_steering import GENERATED_METHODS
from ..steps.steering import METHODS as SCALE_METHODS

TABLE_COLUMNS = ["eps", "quantile", "method", "alpha", "push_norm", "relative", "passes", "seconds"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `fisherlib steer`'s options to `parser` (its subcommand parser)."""
    parser.add_argument("--model", required=True, help="registry name (tiny, pythia, llama, qwen, smollm2), hub id, model folder or .gguf file")
    parser.add_argument("--layer", required=True,
                        help="where α v is added: the residual entering block LAYER, 0..n_layers (n_layers: the final norm's input), or 'head'")  # fmt: skip
    parser.add_argument("--vector", required=True,
                        help="the steering vector: .pt/.pth (a tensor or a dict of tensors), .npy, .safetensors, or a repeng "
                             "control-vector .gguf (its direction.{i} is our layer i+1)")  # fmt: skip
    parser.add_argument("--key", default=None, help="which tensor of a .pt dict, .safetensors or .gguf file (needed when it holds several)")
    parser.add_argument("--prompts", required=True, help='a text file, one prompt a line, or a .jsonl with a "text" or "prompt" field a line')
    parser.add_argument("--eps", type=float, nargs="+", default=[1.0], metavar="EPS", help="KL thresholds in nats (default: 1)")
    parser.add_argument("--quantile", type=float, default=0.95, help="the quantile of per-token KL that must reach ε (default: 0.95)")
    parser.add_argument("--method", nargs="+", default=["closed"], metavar="METHOD",
                        help=f"{'|'.join(SCALE_METHODS)} (default: closed; several give one row each); "
                             f"with --generate: {'|'.join(GENERATED_METHODS)}")  # fmt: skip
    parser.add_argument("--generate", type=int, default=0, metavar="W",
                        help="budget the KL over W generated tokens per prompt (steered against base), not over the prompts' own tokens")  # fmt: skip
    parser.add_argument(
        "--per-token", default=None, metavar="CSV", help="also write the per-token budget (steering_budget: closed, quartic, exact) to CSV"
    )
    parser.add_argument("--out", default=None, metavar="CSV", help="write the budget table, one row per ε and method, to CSV")
    parser.add_argument("--device", default="", help="cpu, cuda, cuda:1, mps (default: the model's default)")
    parser.add_argument("--dtype", default="", help="float32, bfloat16, float16, float64 (default: the model's default)")
    return parser


def read_prompts(path: str | Path) -> list[str]:
    """Return the prompts of a text file (one a line, blank lines skipped) or a `.jsonl` (a "text" or "prompt" field a line)."""
    from ..core.errors import InputError
    from ..io.jsonl import jsonl_records

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"no prompt file {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise InputError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    prompts = []
    if path.suffix.lower() == ".jsonl":
        for number, record in jsonl_records(lines, lambda number, error: InputError(f"{path}:{number}: not JSON ({error.msg})")):
            text = (
                record if isinstance(record, str) else next((record[k] for k in ("text", "prompt") if isinstance(record, dict) and k in record), None)
            )
            if not isinstance(text, str):
                raise InputError(f'{path}:{number}: no "text" or "prompt" string field')
            if text:
                prompts.append(text)
    else:
        prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise InputError(f'{path} holds no prompts (one a line, or a .jsonl with a "text" or "prompt" field a line)')
    return prompts


def _layer_argument(text: str):
    from ..core.errors import InputError

    value = text.strip()
    if value == "head":
        return value
    try:
        return int(value)
    except ValueError:
        raise InputError(f"--layer must be a whole number or 'head', not {text!r}") from None


def _methods(names: list[str], generate: int) -> tuple[str, ...]:
    from ..core.errors import InputError

    allowed = GENERATED_METHODS if generate else SCALE_METHODS
    wrong = [name for name in names if name not in allowed]
    if wrong:
        where = " with --generate" if generate else ""
        raise InputError(f"unknown --method {', '.join(wrong)}{where}: use {'|'.join(allowed)}")
    return tuple(dict.fromkeys(names))


def mean_residual_norm(model, tokens: list, layer) -> tuple[float, int, int | None]:
    """Return `(mean ‖r_ℓ‖, tokens averaged, width d)` at `layer` over every token but each prompt's first
    (`(nan, 0, None)` when every prompt is one token).

    Uses `residuals_by_layer` with every prefix of each prompt (one pass per prompt: prefixes group).
    """
    from ..layers.engine import residuals_by_layer

    contexts = [ids[: t + 1] for ids in tokens for t in range(1, len(ids))]
    if not contexts:
        return math.nan, 0, None
    r = residuals_by_layer(model, contexts, [layer])[layer].double()
    return float(r.norm(dim=-1).mean()), len(contexts), int(r.shape[-1])


def steer_table(model, prompts, layer, v, eps, quantile: float = 0.95, methods=("closed",), generate: int = 0, residual_norm: float = math.nan):
    """Return the budget table: one row per ε and method (columns `TABLE_COLUMNS`, plus `level` with `generate`)."""
    import pandas as pd

    from ..steps.steering import steering_scale

    norm = float(v.norm())
    rows = []
    for method in methods:
        for e in eps:
            if generate:
                from ..steps.generated_steering import generated_scale

                found = generated_scale(
                    model, prompts, layer, v, eps=e, quantile=quantile, n_generate=generate, method=method, divergence="steered_base"
                )
            else:
                found = steering_scale(model, prompts, layer, v, eps=e, quantile=quantile, method=method)
            alpha = float(found.alpha)
            row = dict(eps=float(e), quantile=quantile, method=method, alpha=alpha, push_norm=alpha * norm,
                       relative=alpha * norm / residual_norm, passes=int(found.passes), seconds=float(found.seconds))  # fmt: skip
            if generate:
                # level: the KL quantile measured at α (NaN for closed); at_jump: α sits on a flip of a greedy choice.
                row["level"] = float(found.level)
                row["at_jump"] = bool(getattr(found, "at_jump", False))
            rows.append(row)
    return pd.DataFrame(rows)


def run(args: argparse.Namespace) -> int:
    """Run `fisherlib steer`: check the inputs, load the model, print (and write) the budget."""
    import time

    from ..core.errors import InputError
    from ..io.atomic import atomic_write_text
    from ..io.vectors import load_vector
    from ..layers.engine import n_layers
    from ..layers.steering_pass import check_steering_layer, token_texts
    from ..models import loading

    # Everything that needs no model first: a typo fails in a second, not after the load.
    layer = _layer_argument(args.layer)
    prompts = read_prompts(args.prompts)
    v = load_vector(args.vector, key=args.key, layer=layer if isinstance(layer, int) else None)
    if not all(math.isfinite(e) and e > 0 for e in args.eps):
        raise InputError(f"every --eps must be a positive number (nats), got {' '.join(map(str, args.eps))}")
    if not 0 < args.quantile < 1:
        raise InputError(f"--quantile must lie in (0, 1), got {args.quantile}")
    if args.generate < 0:
        raise InputError(f"--generate must be a positive number of tokens, got {args.generate}")
    methods = _methods(args.method, args.generate)

    start = time.perf_counter()
    model = loading.load_model(args.model, device=args.device or None, dtype=args.dtype or None)
    n = n_layers(model)
    try:
        layer = check_steering_layer(model, layer)
    except InputError:
        raise InputError(f"{args.model} has no layer {args.layer}: layers are 0..{n} (the residual entering block ℓ; "
                         f"{n} is the final norm's input) or 'head'") from None  # fmt: skip
    tokens = token_texts(model, prompts)
    residual_norm, n_norm, width = mean_residual_norm(model, tokens, layer)
    if width is not None and v.shape[0] != width:
        raise InputError(f"the vector in {args.vector} has {v.shape[0]} entries, but layer {layer} of {args.model} has residual "
                         f"width d = {width}: expected a vector of {width} entries")  # fmt: skip
    loaded = time.perf_counter() - start

    table = steer_table(model, prompts, layer, v, args.eps, args.quantile, methods, args.generate, residual_norm)
    norm = float(v.norm())
    n_tokens = sum(len(t) for t in tokens)
    source = args.vector + (f" [{args.key}]" if args.key else "")
    over = f"{args.generate} generated tokens per prompt" if args.generate else "the prompts' tokens"
    print(f"steering budget of {source} at layer {layer} of {args.model} ({model.model_id}; layers 0..{n}, d = {v.shape[0]})")
    print(f"{len(prompts)} prompts, {n_tokens} tokens; KL quantile {args.quantile} over {over}; model loaded in {loaded:.1f} s")
    print(f"‖v‖ = {norm:.6g}; mean ‖r_{layer}‖ = {residual_norm:.6g} over {n_norm} tokens (each prompt's first left out)")
    print("alpha: the push is alpha·v (units of v as stored, not normalised); push_norm = alpha·‖v‖; "
          f"relative = push_norm / mean ‖r_{layer}‖; passes: forward passes of one text; seconds: wall time")  # fmt: skip
    shown = table[[c for c in [*TABLE_COLUMNS, "level", "at_jump"] if c in table]]
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.6g}"))

    if args.out:
        full = table.assign(model=args.model, model_id=model.model_id, layer=layer, vector=args.vector, key=args.key or "",
                            vector_norm=norm, mean_residual_norm=residual_norm, n_prompts=len(prompts), n_tokens=n_tokens,
                            generate=args.generate)  # fmt: skip
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, full.to_csv(index=False))
        print(f"budget table written to {out}")
    if args.per_token:
        from ..steps.steering import steering_budget

        begun = time.perf_counter()
        per_token = steering_budget(model, prompts, layer, v, args.eps)
        out = Path(args.per_token)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, per_token.to_csv(index=False))
        print(f"per-token budget ({len(per_token)} rows: tokens × ε) written to {out} in {time.perf_counter() - begun:.1f} s")
    return 0
