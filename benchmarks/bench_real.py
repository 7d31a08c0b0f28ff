"""Benchmark: the real tier's three LM-head geometries at full size, with a small trunk, stage by stage.

The study's models cannot be downloaded here, but what they cost past the trunk is set by the LM head:

    pythia-1b     W 50 304 x 2048, untied, 50 277 tokens (27 padding rows)
    Llama-3.2-1B  W 128 256 x 2048, tied to the embedding
    Qwen3-1.7B    W 151 936 x 2048, tied, 151 669 tokens (267 padding rows)

Each geometry is built from a config (random weights, `--layers` trunk layers, LM-head rows scaled so that
logits spread as a trained model's do) and run through the three stages that touch the whole of W:

    sample   `sample_positions` (capture h, logits and F_k spectra of the 4x candidate pool), on the
             embedded standard-library corpora with a word-level tokenizer built here
    sweep    `measure_boundaries` at the study's parameters (top_k 64, 20 random + 8 control, 9 eps)
    full F   `fisher_pullback(W, p)` without truncation, as notebook 02 computes it

and prints seconds per position and peak memory per stage (CPU: peak resident set, reset before each
stage through /proc/self/clear_refs; CUDA: peak allocated), plus how many trunk tokens sampling ran per
token it needed. `--json FILE` writes the rows for `benchmarks/gpu_check.py`.

    python benchmarks/bench_real.py                       # all three, a few minutes on 2 cores
    python benchmarks/bench_real.py --geometry qwen3-1.7b --device cuda --positions 200
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_real.py   # the same on other code
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections import Counter
from pathlib import Path

import torch

from memory import status_kib

GEOMETRIES = {
    "pythia-1b": dict(kind="gpt_neox", vocab=50304, tokens=50277, tied=False, heads=8, kv_heads=8),
    "llama-3.2-1b": dict(kind="llama", vocab=128256, tokens=128256, tied=True, heads=32, kv_heads=8),
    "qwen3-1.7b": dict(kind="qwen3", vocab=151936, tokens=151669, tied=True, heads=16, kv_heads=8),
}
WIDTH = 2048
EPS_GRID = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 2.0, 5.0]
CORPORA = ["stdlib-code", "stdlib-docs"]
LOGIT_STD = 3.0  # spread of the logits over the vocabulary, about a trained 1B model's


def build_config(geometry: dict, layers: int):
    """Return a transformers config of the geometry's head with a `layers`-deep, narrow-MLP trunk."""
    import transformers

    common = dict(vocab_size=geometry["vocab"], hidden_size=WIDTH, num_hidden_layers=layers, num_attention_heads=geometry["heads"],
                  intermediate_size=1024, max_position_embeddings=2048, tie_word_embeddings=geometry["tied"])  # fmt: skip
    if geometry["kind"] == "gpt_neox":
        return transformers.GPTNeoXConfig(**common)
    if geometry["kind"] == "llama":
        return transformers.LlamaConfig(**common, num_key_value_heads=geometry["kv_heads"])
    return transformers.Qwen3Config(**common, num_key_value_heads=geometry["kv_heads"], head_dim=WIDTH // geometry["heads"])


def build_tokenizer(max_words: int = 8000):
    """Return a word-level tokenizer over the embedded corpora's most common words (no download)."""
    import re

    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    from fisherlib.data.corpora import stdlib_split

    counts: Counter[str] = Counter()
    for kind in ("code", "docs"):
        for document in stdlib_split(kind)[1]:
            counts.update(re.findall(r"\w+|[^\w\s]", document.text))
    vocab = {"[UNK]": 0, "</s>": 1}
    for word, _ in counts.most_common(max_words):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def build_model(name: str, layers: int, device: torch.device, dtype: torch.dtype):
    """Return a `LoadedModel` of geometry `name` built from its config, without a folder on disk."""
    from transformers import AutoModelForCausalLM

    from fisherlib.models.loading import LoadedModel
    from fisherlib.models.surgery import find_lm_head

    geometry = GEOMETRIES[name]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_config(geometry, layers), dtype=dtype).eval()
    with torch.no_grad():
        # h after the final norm has ‖h‖ ≈ sqrt(d); rows of std LOGIT_STD/sqrt(d) give logits of std ≈ LOGIT_STD.
        model.get_output_embeddings().weight.normal_(0.0, LOGIT_STD / math.sqrt(WIDTH))
    model.to(device)
    head = find_lm_head(model)
    head.n_tokens = geometry["tokens"]  # as the real tokenizer has (read by code that knows padding rows)
    return LoadedModel(model=model, tokenizer=build_tokenizer(), arch=name, model_id=f"bench:{name}", revision=None,
                       device=device, dtype=dtype, head=head, logits_check_error=0.0)  # fmt: skip


class PeakMemory:
    """Peak memory of a stage: CUDA's peak allocation, or the CPU's peak resident set (VmHWM, reset first)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as clear:
                    clear.write("5")  # resets VmHWM to the current resident set
            except OSError:
                pass
            self.start = status_kib("VmRSS") * 1024
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = status_kib("VmHWM") * 1024
        self.seconds = time.perf_counter() - self.started

    @property
    def extra_gib(self) -> float:
        """Peak above what was resident when the stage started (the model, W), in GiB."""
        return (self.peak - self.start) / 2**30


class TrunkTokens:
    """Count the tokens the trunk runs ([batch x length] per pass) against those it needs (prefix through
    each row's last requested position), by wrapping `fisherlib.models.loading.capture_final_residual`."""

    def __enter__(self) -> TrunkTokens:
        import fisherlib.models.loading

        self.module, self.original = fisherlib.models.loading, fisherlib.models.loading.capture_final_residual
        self.run = self.needed = 0

        def counting(model, input_ids, attention_mask, rows, cols):
            rows, cols = torch.as_tensor(rows).reshape(-1), torch.as_tensor(cols).reshape(-1)
            self.run += input_ids.numel()
            self.needed += sum(int(cols[rows == r].max()) + 1 for r in rows.unique().tolist())
            return self.original(model, input_ids, attention_mask, rows, cols)

        fisherlib.models.loading.capture_final_residual = counting
        return self

    def __exit__(self, *exc) -> None:
        self.module.capture_final_residual = self.original

    @property
    def ratio(self) -> float:
        return self.run / max(self.needed, 1)


def bench_geometry(name: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    from fisherlib.core.fisher import fisher_pullback
    from fisherlib.data.sampling import sample_positions
    from fisherlib.steps.sweep import measure_boundaries

    started = time.perf_counter()
    loaded = build_model(name, args.layers, device, dtype)
    row = dict(geometry=name, V=loaded.head.vocab_size, d=loaded.head.hidden_size, build_s=time.perf_counter() - started)
    print(f"{name}: built in {row['build_s']:.1f}s", flush=True)

    with TrunkTokens() as tokens, PeakMemory(device) as stage:
        sample = sample_positions(loaded, CORPORA, args.positions, seed=0, top_k=args.top_k, min_prefix=16,
                                  max_context=args.max_context, pool_factor=4, batch_size=args.batch_size, progress=False)  # fmt: skip
    row.update(sample_s_per_pos=stage.seconds / len(sample), sample_peak_gib=stage.peak / 2**30,
               sample_extra_gib=stage.extra_gib, trunk_tokens_run=tokens.run, trunk_tokens_needed=tokens.needed,
               trunk_ratio=tokens.ratio)  # fmt: skip
    print(f"  sample: {stage.seconds:.1f}s for {len(sample)} positions, peak {stage.peak / 2**30:.2f} GiB, "
          f"trunk ran {tokens.run} tokens for {tokens.needed} needed ({tokens.ratio:.2f}x)", flush=True)  # fmt: skip

    h = sample.h[: args.sweep_positions]
    W, b = loaded.head.weight, loaded.head.bias
    with PeakMemory(device) as stage:
        table = measure_boundaries(W, b, h.to(device), EPS_GRID, top_k=args.top_k, n_random=20, n_control=8, progress=False)
    row.update(sweep_s_per_pos=stage.seconds / len(h), sweep_peak_gib=stage.peak / 2**30, sweep_extra_gib=stage.extra_gib,
               sweep_rows=len(table))  # fmt: skip
    print(f"  sweep: {stage.seconds:.1f}s for {len(h)} positions, peak {stage.peak / 2**30:.2f} GiB", flush=True)

    h = sample.h[: args.full_f_positions].to(device).double()
    with torch.no_grad():
        p = torch.softmax(_logits64(h, W, b), -1)
    with PeakMemory(device) as stage:
        F = fisher_pullback(W, p)
    row.update(full_f_s_per_pos=stage.seconds / len(h), full_f_peak_gib=stage.peak / 2**30, full_f_extra_gib=stage.extra_gib)
    print(f"  full F: {stage.seconds:.1f}s for {len(h)} positions, peak {stage.peak / 2**30:.2f} GiB", flush=True)
    del F, p, loaded
    return row


def _logits64(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, chunk: int = 16384) -> torch.Tensor:
    """Return float64 logits `[P, V]` reading W in chunks of rows (no float64 copy of W in the harness)."""
    z = torch.cat([h @ W[start : start + chunk].double().T for start in range(0, W.shape[0], chunk)], -1)
    return z if b is None else z + b.double()


def print_table(rows: list[dict], device: torch.device) -> None:
    memory = "peak GPU GiB" if device.type == "cuda" else "peak RSS GiB (+stage)"
    header = (f"{'head':<14} {'V x d':>13} | {'sample s/pos':>12} {memory:>22} {'trunk x':>7} | "
              f"{'sweep s/pos':>11} {memory:>22} | {'full F s/pos':>12} {memory:>22}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in rows:

        def mem(stage):
            return f"{r[f'{stage}_peak_gib']:.2f} (+{r[f'{stage}_extra_gib']:.2f})"

        print(f"{r['geometry']:<14} {r['V']:>6}x{r['d']:<6} | {r['sample_s_per_pos']:>12.3f} {mem('sample'):>22} "
              f"{r['trunk_ratio']:>7.2f} | {r['sweep_s_per_pos']:>11.3f} {mem('sweep'):>22} | "
              f"{r['full_f_s_per_pos']:>12.2f} {mem('full_f'):>22}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", nargs="+", choices=[*GEOMETRIES, "all"], default=["all"])
    parser.add_argument("--positions", type=int, default=8, help="positions sampled (pool 4x as many)")
    parser.add_argument("--sweep-positions", type=int, default=2)
    parser.add_argument("--full-f-positions", type=int, default=1)
    parser.add_argument("--layers", type=int, default=1, help="trunk layers (the head is what is measured)")
    parser.add_argument("--max-context", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if min(args.positions, args.sweep_positions, args.full_f_positions) < 1 or args.sweep_positions > args.positions:
        parser.error("--positions, --sweep-positions and --full-f-positions must be >= 1, sweep <= positions")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    names = list(GEOMETRIES) if "all" in args.geometry else args.geometry

    import fisherlib

    print(f"fisherlib from {Path(fisherlib.__file__).parent}; torch {torch.__version__}; {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}), "
          f"{args.threads} threads; {args.layers}-layer trunk, {args.dtype}; {args.positions} sampled / "
          f"{args.sweep_positions} swept / {args.full_f_positions} full-F positions per head", flush=True)  # fmt: skip
    rows = [bench_geometry(name, args, device, dtype) for name in names]
    print()
    print_table(rows, device)
    if args.json:
        args.json.write_text(json.dumps(dict(device=str(device), rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
