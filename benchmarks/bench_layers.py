"""Benchmark: `fisherlib.layer_boundary` against the naive search at an inner layer, timed in one run.

Naive: for every (position, direction, ε), the whole context is forwarded again at every step of a
doubling bracket (from `t = 1e-3`) followed by 50 bisection steps, with a hook adding `t u` to the target
token's residual at the layer; all lines of a step share forward passes (batched over lines, as a careful
user would). `fisherlib`: the prefix is run once and its keys and values reused, each evaluation forwards
copies of the target token only, and one geometric scan with forward-mode slopes serves every ε of a
line; suspect intervals (where the divergence may rise above ε and fall back) are split, and each first
crossing's bracket is shrunk to `rtol` by safeguarded Newton.

Both run the model in float64 (the comparison is at 1e-6; float32 logits cannot resolve it), on the CPU
unless `--device cuda`. Prints one row per method and ends with `speedup <ratio>x max_rel_err <error>`.

    python benchmarks/bench_layers.py                       # tiny (the embedded default), layer 2, ~5 min on 2 cores
    python benchmarks/bench_layers.py --model ../shared/fixtures/models/stories260K/hf \\
        --corpus ../shared/fixtures/corpora/wikitext2/wiki.test.raw.head
"""

from __future__ import annotations

import math
import time

import torch

import fisherlib as fl
from fisherlib.core.bisection import bisection_boundary
from fisherlib.data.corpora import load_corpus
from fisherlib.layers import pullback as layers
from fisherlib.run.params import ARCH_DEFAULT_CORPORA
from options import model_parser


def draw_contexts(model, corpus: str, n: int, max_context: int, min_prefix: int, seed: int) -> list[torch.Tensor]:
    """Return `n` contexts (through a target token drawn uniformly after `min_prefix`), one per document."""
    generator = torch.Generator().manual_seed(seed)
    contexts = []
    for doc in load_corpus(corpus, 4 * n, seed, tokenizer=model.tokenizer):
        ids = model.tokenizer(doc.text, truncation=True, max_length=max_context)["input_ids"]
        if len(ids) > min_prefix + 1:
            index = int(torch.randint(min_prefix, len(ids), (1,), generator=generator))
            contexts.append(torch.tensor(ids[: index + 1]))
        if len(contexts) == n:
            break
    return contexts


def naive_boundary(model, contexts, layer, U, eps, bisection_steps: int = 50, batch_size: int = 64) -> torch.Tensor:
    """Doubling then bisection, every step a full-context forward pass of every live line."""
    P, D, d = U.shape
    E = len(eps)
    items = [(i, j, e) for i in range(P) for j in range(D) for e in range(E)]
    item_contexts = [contexts[i] for i, _, _ in items]
    u = torch.stack([U[i, j] for i, j, _ in items])[:, None, :]  # [N, 1, d]
    target = torch.tensor([eps[e] for _, _, e in items], dtype=torch.float64)
    z0 = layers.full_context_logits(model, contexts, layer, torch.zeros(P, 1, d, dtype=torch.float64), batch_size)[:, 0]
    log_p = torch.log_softmax(z0, -1)[[i for i, _, _ in items]]

    def divergence(t):
        z = layers.full_context_logits(model, item_contexts, layer, t[:, None, None] * u, batch_size)[:, 0]
        return (log_p.exp() * (log_p - torch.log_softmax(z, -1))).sum(-1)

    start = torch.full((len(items),), 1e-3, dtype=torch.float64)
    return bisection_boundary(divergence, target, start, n_bisect=bisection_steps).reshape(P, D, E)


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--positions", type=int, default=8)
    parser.add_argument("--directions", type=int, default=4)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.01, 1.0])
    parser.add_argument("--max-context", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = fl.load_model(args.model, device=args.device, dtype=torch.float64)
    corpus = args.corpus or ARCH_DEFAULT_CORPORA.get(args.model, ["stdlib-code"])[0]
    contexts = draw_contexts(model, corpus, args.positions, args.max_context, 8, args.seed)
    layer = args.layer if args.layer == "head" else int(args.layer)
    width = model.head.hidden_size
    generator = torch.Generator().manual_seed(args.seed)
    U = torch.nn.functional.normalize(torch.randn(len(contexts), args.directions, width, dtype=torch.float64, generator=generator), dim=-1)
    lengths = [len(c) for c in contexts]
    print(
        f"model {model.model_id} (float64 on {args.device}, {args.threads} threads), layer {layer} of "
        f"{layers.n_layers(model)}, {len(contexts)} positions (context {min(lengths)}–{max(lengths)} tokens) × "
        f"{args.directions} directions × ε {args.eps}"
    )

    start = time.perf_counter()
    fast = layers.layer_boundary(model, contexts, layer, U.to(args.device), args.eps).cpu()
    fast_seconds = time.perf_counter() - start
    start = time.perf_counter()
    naive = naive_boundary(model, contexts, layer, U.to(args.device), args.eps).cpu()
    naive_seconds = time.perf_counter() - start

    finite = torch.isfinite(fast) & torch.isfinite(naive)
    if not torch.equal(torch.isfinite(fast), torch.isfinite(naive)):
        print(f"warning: censoring differs on {int((torch.isfinite(fast) != torch.isfinite(naive)).sum())} lines")
    error = float(((fast[finite] - naive[finite]).abs() / naive[finite]).max()) if finite.any() else math.nan
    print(f"{'method':<34}{'seconds':>10}{'lines×ε':>10}")
    print(f"{'naive (full context, 2^k + 50 bis.)':<34}{naive_seconds:>10.2f}{naive.numel():>10}")
    print(f"{'fisherlib.layer_boundary':<34}{fast_seconds:>10.2f}{fast.numel():>10}")
    print(f"speedup {naive_seconds / fast_seconds:.1f}x max_rel_err {error:.2e}")


if __name__ == "__main__":
    main()
