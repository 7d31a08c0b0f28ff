"""Argument checks shared by `fisher`, `boundary`, `directions` and `measure`: one `InputError` per bad input.

Conventions, the same in every public function of those modules:

- Array arguments are `torch.Tensor`s. A numpy array is converted with `torch.as_tensor` (no copy on
  the CPU) and placed on the device of the call's other tensors; anything else is refused.
- Shapes are written as in the docstrings, e.g. `[P, D, V]`; a size named alike must agree between
  arguments, and the message names the expected shape and the one given.
- NaN and ±inf are refused (logits `z` may hold −inf, a token ruled out, but every row needs a finite
  maximum). The test is one reduction per argument, `torch.aminmax` (NaN propagates, and no
  `[..., V]` boolean mask is allocated: `W` can be 150k × 2048); messages are only built on failure.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .errors import InputError


def _symbols(notation: str) -> list[str]:
    inner = notation.strip()[1:-1].strip()
    return [s.strip() for s in inner.split(",")] if inner else []


def _rank_fits(notation: str, rank: int) -> bool:
    symbols = _symbols(notation)
    if symbols and symbols[0] == "...":
        return rank >= len(symbols) - 1
    return rank == len(symbols)


def _ranks(notations: tuple[str, ...]) -> str:
    words = []
    for notation in notations:
        symbols = _symbols(notation)
        words.append(f"at least {len(symbols) - 1}" if symbols and symbols[0] == "..." else str(len(symbols)))
    return " or ".join(words)


def device_of(*xs) -> torch.device | None:
    """Return the device of the first torch tensor among `xs` (numpy arrays are converted onto it)."""
    return next((x.device for x in xs if isinstance(x, torch.Tensor)), None)


def tensor(name: str, x, *notations: str, device: torch.device | None = None, finite: bool | str = True) -> torch.Tensor:
    """Return `x` as a floating-point tensor whose rank fits one of `notations` (e.g. "[P, V]", "[V]").

    A numpy array is converted with `torch.as_tensor` onto `device`. `finite`: True refuses NaN and
    ±inf; "logits" refuses NaN, +inf and rows that are all −inf; False checks nothing.

    Raises:
        InputError: another type, a non-floating dtype, another rank, or non-finite values.
    """
    expected = " or ".join(notations)
    if isinstance(x, np.ndarray):
        try:
            x = torch.as_tensor(x, device=device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise InputError(f"{name} must be a torch.Tensor {expected}; the numpy array {x.dtype} {x.shape} cannot be converted ({error})") from None
    elif not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor {expected} (a numpy array is converted), got {type(x).__name__}")
    if not x.is_floating_point() or not any(_rank_fits(n, x.dim()) for n in notations):
        raise InputError(
            f"{name} must be a floating-point tensor {expected} ({_ranks(notations)} dimensions), got {x.dtype} of shape {tuple(x.shape)}"
        )
    if finite:
        check_finite(name, x, notations[0], logits=finite == "logits")
    return x


def check_finite(name: str, x: torch.Tensor, notation: str = "", logits: bool = False) -> None:
    """Raise InputError unless `x` is finite (with `logits`: no NaN, no +inf, a finite maximum per row)."""
    if x.numel() == 0:
        return
    if logits:
        ok = torch.isfinite(x.amax(-1)).all()  # NaN propagates through the max; +inf and all-(−inf) rows show
    else:
        low, high = torch.aminmax(x)
        ok = torch.isfinite(low) & torch.isfinite(high)
    if bool(ok):
        return
    # The failure path only: say what is wrong.
    n_nan = int(torch.isnan(x).sum())
    n_pos = int((x == torch.inf).sum())
    n_neg = int((x == -torch.inf).sum())
    counts = ((n_nan, "NaN"), (n_pos, "+inf")) if logits else ((n_nan, "NaN"), (n_pos, "+inf"), (n_neg, "-inf"))
    found = [f"{n} {kind}" for n, kind in counts if n]
    if logits:
        n_rows = int((x == -torch.inf).all(-1).sum())
        if n_rows:
            found.append(f"{n_rows} row(s) of -inf only")
        advice = "logits may be -inf (a token ruled out), but not NaN or +inf, and every row needs a finite maximum"
    else:
        advice = "pass finite values"
    raise InputError(f"{name} {notation} holds {', '.join(found)} (shape {tuple(x.shape)}); {advice}")


def check_shapes(*items: tuple[str, torch.Tensor | None, str]) -> dict[str, int]:
    """Check that sizes named alike agree across `(name, tensor, notation)` items; return the sizes by name.

    A notation may start with `...` (any leading sizes; the others align from the right) and may hold
    literal sizes (`[..., 3]`). Items whose tensor is None are skipped.
    """
    sizes: dict[str, tuple[int, str, torch.Tensor, str]] = {}
    for name, x, notation in items:
        if x is None:
            continue
        symbols = _symbols(notation)
        if not _rank_fits(notation, x.dim()):
            raise InputError(f"{name} must be {notation} ({_ranks((notation,))} dimensions), got shape {tuple(x.shape)}")
        if symbols and symbols[0] == "...":
            symbols = symbols[1:]
            shape = tuple(x.shape[x.dim() - len(symbols) :])
        else:
            shape = tuple(x.shape)
        for symbol, size in zip(symbols, shape):
            if symbol.isdigit():
                if size != int(symbol):
                    raise InputError(f"{name} must be {notation}; got shape {tuple(x.shape)}")
                continue
            if symbol in sizes and sizes[symbol][0] != size:
                bound, other, other_x, other_notation = sizes[symbol]
                raise InputError(
                    f"{name} must be {notation} to match {other} {other_notation} = {tuple(other_x.shape)}; "
                    f"got {name} of shape {tuple(x.shape)} ({symbol} = {size}, not {bound})"
                )
            sizes.setdefault(symbol, (size, name, x, notation))
    return {symbol: entry[0] for symbol, entry in sizes.items()}


def check_same_device(*items: tuple[str, torch.Tensor | None]) -> None:
    """Raise InputError unless every given tensor is on one device."""
    given = [(name, x) for name, x in items if x is not None]
    for name, x in given[1:]:
        if x.device != given[0][1].device:
            raise InputError(f"{given[0][0]} is on {given[0][1].device} but {name} on {x.device}; put them on one device")


def check_count(name: str, value, minimum: int = 0, maximum: int | None = None, maximum_name: str | None = None) -> int:
    """Return `value` as an int; raise InputError unless it is an integer in `[minimum, maximum]`.

    `maximum_name` says where the maximum comes from, e.g. "V (the vocabulary size)".
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InputError(f"{name} must be {kind}, got {value!r}")
    if maximum is not None and value > maximum:
        symbol, _, why = (maximum_name or "").partition(" ")
        where = f" {symbol} = {maximum} {why}".rstrip() if symbol else f" {maximum}"
        raise InputError(f"{name} must be at most{where}, got {value}")
    return int(value)


def check_top_k(top_k, V: int, n_tokens: int | None = None) -> int:
    """Return `top_k` as an int; raise InputError unless `1 <= top_k <= V` (or `<= n_tokens` when it is smaller)."""
    if n_tokens is not None:
        n_tokens = check_count("n_tokens", n_tokens, minimum=1)
    if n_tokens is not None and n_tokens < V:
        return check_count("top_k", top_k, 1, n_tokens, "n_tokens (the tokenizer's tokens)")
    return check_count("top_k", top_k, 1, V, "V (the vocabulary size)")


def check_eps(eps, device: torch.device | None) -> torch.Tensor:
    """Return ε as a float64 `[E]` tensor on `device`; raise InputError unless every ε is positive and finite."""
    try:
        values = torch.as_tensor(eps, dtype=torch.float64, device=device).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"eps must be a positive number or a sequence of them, got {eps!r}") from error
    if values.numel() == 0 or not bool(((values > 0) & torch.isfinite(values)).all()):
        raise InputError(f"every ε must be a positive finite number, got {values.tolist()}")
    return values


def check_number(name: str, value, ok, expected: str) -> float:
    """Return `value` as a float; raise InputError unless `ok(value)` (NaN, bools and non-numbers never pass)."""
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, RuntimeError):
        number = math.nan
    if math.isnan(number) or not ok(number):
        raise InputError(f"{name} must be {expected}, got {value!r}")
    return number
