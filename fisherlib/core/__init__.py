"""The thin core: the Fisher pullback of the next-token distribution and the exact KL boundary along a line.

Tensors in, tensors out (float32 or float64; line searches in float64): `fisher` (the pullback `F`, its
spectrum, the closed forms `t = sqrt(2ε / uᵀFu)` and the cumulant expansion), `boundary` (the exact first
crossing of `KL = ε` along `z + t a`), `bisection` (the brute-force search the tests and benchmarks
compare against), `directions` (the sweep's unit directions), `checks` and `errors` (one clear error per
bad input). It imports torch and numpy only: nothing of fisherlib outside `core`, no pandas, no
transformers, so it can be read, and reused, in one sitting (import its modules by name:
`from fisherlib.core import fisher`).
"""
