"""Command-line options every layer-level benchmark takes, declared once so they mean the same in each."""

from __future__ import annotations

import argparse


def model_parser(description: str) -> argparse.ArgumentParser:
    """Return a parser with --model, --corpus, --layer, --device, --threads and --seed (the benchmark adds its own)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="registry name or model folder (default: tiny)")
    parser.add_argument("--corpus", default=None, help="corpus of the texts (default: the model's first default corpus)")
    parser.add_argument("--layer", default="2", help="block boundary (int) or 'head' (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser
