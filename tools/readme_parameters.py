"""Print or refresh the table of notebook parameters in docs/parameters.md (built from fisherlib.run.params.StudyParams).

Usage (from the repository root):
    python tools/readme_parameters.py           # print the table
    python tools/readme_parameters.py --write   # rewrite docs/parameters.md between <!-- parameters:begin/end -->
    python tools/readme_parameters.py --check   # exit 1 when docs/parameters.md is out of date

Run `--write` after adding or changing a StudyParams field; tests/run/test_parameter_docs.py checks the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fisherlib.run.parameter_docs import parameters_markdown, readme_block, refresh_readme  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the parameter block")
    mode.add_argument("--check", action="store_true", help="exit 1 when the block is out of date")
    parser.add_argument("--readme", type=Path, default=ROOT / "docs" / "parameters.md", help="the file holding the table")
    args = parser.parse_args(argv)
    if args.write:
        changed = refresh_readme(args.readme)
        print(f"{'updated' if changed else 'unchanged'}: {args.readme}")
        return 0
    if args.check:
        if readme_block(args.readme.read_text(encoding="utf-8")) != parameters_markdown():
            print(f"{args.readme} is out of date: run python tools/readme_parameters.py --write", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(parameters_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
