"""Benchmark: the closed-form population steering budget against the bisection baseline, same prompts, one run.

The question: the α at which the 95th percentile of per-token KL (against the unsteered model) over a prompt
set reaches ε = 1 nat, with `α v` added to the residual at a layer at every position. The baseline does what
a public steering tool does: double α from 1 until the quantile passes ε, then bisect to `--rtol`, each step a
full forward pass of every prompt. `closed` reads the budget off one batch of three plain passes per prompt
(the logits and a central difference for their velocity; `α_pred = sqrt(2ε / Var_p[a])` per token, then the
order statistic); `quartic` off the same passes; `exact` finds the root of the population quantile with full
passes, started from the closed form. Each method is timed over `--repeats` runs (the best kept). Prints one
row per method (α, relative error against `exact`, text passes, seconds), then `speedup <bisection/closed>x`
with the closed form's error and `exact_speedup <bisection/exact>x`; then the same for a grid of budgets
(`--grid-eps` × `--grid-quantiles`), which the closed form reads off its one batch and the baseline bisects
cell by cell: `grid_speedup <ratio>x grid_max_rel_err <error>`. Last, the generated-text budget (`--generate` greedy
tokens per prompt, the public iso-KL tool's question) by each method against its bisection: `generated_exact_speedup`.

    python benchmarks/bench_steering.py                 # tiny, layer 2, 16 prompts x 64 tokens, ~1 min on 2 cores
    python benchmarks/bench_steering.py --model ../shared/fixtures/models/stories260K/hf \\
        --corpus ../shared/fixtures/corpora/wikitext2/wiki.test.raw.head --layer 3
"""

from __future__ import annotations

import time

import torch

import fisherlib as fl
from fisherlib.data.corpora import load_corpus
from fisherlib.run.params import ARCH_DEFAULT_CORPORA
from fisherlib.steps.generated_steering import GENERATED_METHODS, generated_scale
from fisherlib.steps.steering import METHODS, closed_form_scales, steering_scale
from options import model_parser


def draw_prompts(model, corpus: str, n: int, n_tokens: int, seed: int) -> list[torch.Tensor]:
    """Return `n` prompts: the first `n_tokens` tokens of `n` documents that have that many."""
    prompts = []
    for doc in load_corpus(corpus, 4 * n, seed, tokenizer=model.tokenizer):
        ids = model.tokenizer(doc.text, truncation=True, max_length=n_tokens)["input_ids"]
        if len(ids) == n_tokens:
            prompts.append(torch.tensor(ids))
        if len(prompts) == n:
            break
    return prompts


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--eps", type=float, default=1.0)
    parser.add_argument("--quantile", type=float, default=0.95)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grid-eps", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--grid-quantiles", type=float, nargs="+", default=[0.5, 0.9, 0.95])
    parser.add_argument("--generate", type=int, default=8, help="greedy tokens per prompt for the generated-text budget (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = fl.load_model(args.model, device=args.device)
    corpus = args.corpus or ARCH_DEFAULT_CORPORA.get(args.model, ["stdlib-code"])[0]
    prompts = draw_prompts(model, corpus, args.prompts, args.tokens, args.seed)
    layer = args.layer if args.layer == "head" else int(args.layer)
    # The steering vector: a seeded random direction scaled to the prompts' mean residual norm at the layer.
    width = model.head.hidden_size
    v = torch.randn(width, dtype=torch.float64, generator=torch.Generator().manual_seed(args.seed))
    v = v / v.norm()
    print(f"{args.model}, layer {layer}: {len(prompts)} prompts x {args.tokens} tokens, ε = {args.eps:g}, quantile {args.quantile:g}, "
          f"rtol {args.rtol:g}, {args.threads} threads, best of {args.repeats}")  # fmt: skip
    results = {}
    for method in METHODS:
        best = None
        for _ in range(args.repeats):
            start = time.perf_counter()
            found = steering_scale(model, prompts, layer, v, eps=args.eps, quantile=args.quantile, method=method, rtol=args.rtol)
            seconds = time.perf_counter() - start
            best = (found, seconds) if best is None or seconds < best[1] else best
        results[method] = best
    exact = results["exact"][0].alpha
    print(f"{'method':<10} {'alpha':>12} {'rel_err':>10} {'passes':>7} {'seconds':>9}")
    for method, (found, seconds) in results.items():
        print(f"{method:<10} {found.alpha:>12.6g} {found.alpha / exact - 1:>10.2e} {found.passes:>7d} {seconds:>9.3f}")
    bisection_seconds = results["bisection"][1]
    print(f"speedup {bisection_seconds / results['closed'][1]:.1f}x closed_rel_err {abs(results['closed'][0].alpha / exact - 1):.2e} "
          f"quartic_rel_err {abs(results['quartic'][0].alpha / exact - 1):.2e}")  # fmt: skip
    print(f"exact_speedup {bisection_seconds / results['exact'][1]:.1f}x "
          f"exact_vs_bisection_rel_diff {abs(results['bisection'][0].alpha / exact - 1):.2e} (both to rtol {args.rtol:g})")  # fmt: skip

    start = time.perf_counter()
    grid = closed_form_scales(model, prompts, layer, v, args.grid_eps, args.grid_quantiles)
    closed_seconds = time.perf_counter() - start
    start = time.perf_counter()
    errors = []
    for cell in grid.itertuples():
        found = steering_scale(model, prompts, layer, v, eps=cell.eps, quantile=cell.quantile, method="bisection", rtol=args.rtol)
        errors.append(abs(cell.alpha / found.alpha - 1))
    bisection_seconds = time.perf_counter() - start
    print(f"grid of {len(grid)} budgets (ε {args.grid_eps} x quantile {args.grid_quantiles}): closed {closed_seconds:.3f} s, "
          f"bisection {bisection_seconds:.3f} s")  # fmt: skip
    print(
        f"grid_speedup {bisection_seconds / closed_seconds:.1f}x grid_max_rel_err {max(errors):.2e} grid_median_rel_err {sorted(errors)[len(errors) // 2]:.2e}"
    )
    if args.generate:
        generated_budgets(model, prompts, layer, v, args)


def generated_budgets(model, prompts, layer, v, args) -> None:
    """The generated-text budget (KL(steered ‖ base) over `--generate` greedy tokens) by each method, each call alone."""
    print(f"generated text: {args.generate} greedy tokens per prompt, KL(steered ‖ base), ε = {args.eps:g}, quantile {args.quantile:g}")
    found = {}
    for method in GENERATED_METHODS:
        start = time.perf_counter()
        scale = generated_scale(model, prompts, layer, v, eps=args.eps, quantile=args.quantile, n_generate=args.generate,
                                method=method, rtol=args.rtol, measure_level=False)  # fmt: skip
        found[method] = (scale, time.perf_counter() - start)
    exact = found["exact"][0].alpha
    print(f"{'method':<10} {'alpha':>12} {'rel_err':>10} {'passes':>7} {'seconds':>9} {'jump':>5}")
    for method, (scale, seconds) in found.items():
        print(f"{method:<10} {scale.alpha:>12.6g} {scale.alpha / exact - 1:>10.2e} {scale.passes:>7d} {seconds:>9.3f} {str(scale.at_jump):>5}")
    print(f"generated_exact_speedup {found['bisection'][1] / found['exact'][1]:.1f}x "
          f"generated_speedup {found['bisection'][1] / found['closed'][1]:.1f}x closed_rel_err {abs(found['closed'][0].alpha / exact - 1):.2e} "
          f"corrected_rel_err {abs(found['corrected'][0].alpha / exact - 1):.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
