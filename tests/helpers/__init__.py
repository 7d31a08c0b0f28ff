"""What several test files share and that is not a fixture: random models and tokenizers, references, synthetic data.

Import as `from helpers.<module> import ...` (tests/ is on the import path as the root conftest's folder);
fixtures live in tests/conftest.py. A test file never imports another test file.

- `layers`: small random causal LMs in float64 (`_random_lm`), contexts and full-context divergences;
- `battery`: every causal-LM architecture transformers ships, built from configs (the layer engine's battery);
- `models`: random tiny LMs of five architectures, a word-level tokenizer, padded batches, a saved Qwen3;
- `precision`: near-deterministic positions and a 60-digit mpmath reference boundary;
- `sweeps`: synthetic sweeps with the measurement schema (the `sweep` fixture's data);
- `dynamics`: synthetic revisions and their tables across checkpoints;
- `claims`: run tables on which every claim is reproduced.
"""
