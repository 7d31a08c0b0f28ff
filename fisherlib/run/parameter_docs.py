"""The table of notebook parameters (`docs/parameters.md`), built from `StudyParams` (its fields, defaults and comments).

Each field's description is its trailing `# ...` comment in `fisherlib/run/params.py`, after the text in
`DESCRIPTIONS` below where it has one (fields without a comment, or whose comment only explains a special
value). A field with neither is an error, so a new parameter cannot reach the docs undocumented.
`python tools/readme_parameters.py --write` refreshes the block of `docs/parameters.md` (between `BEGIN`
and `END`); `tests/run/test_parameter_docs.py` checks it is current.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import re
import textwrap
import tokenize
from pathlib import Path

from ..io.atomic import atomic_write_text
from .params import StudyParams

BEGIN = "<!-- parameters:begin -->"
END = "<!-- parameters:end -->"
GENERATED_NOTE = (
    "<!-- generated from fisherlib.run.params.StudyParams by `python tools/readme_parameters.py --write`; "
    "do not edit by hand -->"
)

# What each field is, for the fields whose trailing comment in StudyParams is missing or only explains a
# special value ("empty: ..."): the table shows this text, then the comment. An entry for a field that no
# longer exists is an error.
DESCRIPTIONS = {
    "arch": "the model: a registry name (`tiny`, `pythia`, `llama`, `qwen`), any causal-LM hub id (`org/name`) "
    "or a local Hugging Face model folder",
    "n_positions": "positions sampled per seed, equal shares per corpus and per effective-rank quintile "
    "(the write-up used about 4000)",
    "seed": "seed of the position sampling and of the random and control directions",
    "top_k": "tokens kept in the truncated Fisher F_k (the k most probable, p_K not renormalised); "
    "the control directions need `top_k` < d",
    "eps_grid": "the KL thresholds ε (nats) at which every boundary t_emp is found; must contain "
    "`small_eps` and `large_eps`",
    "divergence": '`"forward"` KL(p ‖ q_t), the write-up\'s, or `"reverse"` KL(q_t ‖ p) '
    "(censored where ε is above its bound)",
    "n_random": "random unit directions per position (seeded)",
    "n_control": "control directions per position: random directions orthogonal to the rows of W_K "
    "(uᵀF_k u ≈ 0, so t_pred = ∞)",
    "batch_size": "contexts per forward pass (a memory and speed setting)",
    "max_context": "tokens kept from the start of each document (must fit the model's positions)",
    "min_prefix": "the target index is uniform over the tokens after this many tokens of context",
    "pool_factor": "candidate pool size as a multiple of `n_positions`, cut into effective-rank quintiles",
    "corpora": "corpora to sample, equal shares: hub names (`gsm8k`, `codeparrot`, `ultrachat`, `wikitext`), "
    "the embedded `stdlib-code` and `stdlib-docs`, or local `.jsonl` / `.txt` files as `PATH` or `DOMAIN=PATH`",
    "seeds": "seeds to run",
    "device": "torch device (`cpu`, `cuda`, `cuda:1`, ...), or `auto`: a model larger than one GPU spread over "
    "every GPU (accelerate's `device_map=\"auto\"`)",
    "dtype": "the model's dtype (`float32`, `bfloat16`, `float16`)",
    "cache_dir": "where positions, LM heads and sweeps are cached",
    "layers": "the block boundaries notebook 08 measures",
    "results_root": "folder holding `<run>/` with the tables; relative paths start at the repository root",
    "figures_root": "folder holding `<run>/` with the figures; relative paths start at the repository root",
}

_SECTION = re.compile(r"#\s*-{2,}\s*(.*?)\s*-{2,}\s*$")


def _class_comments(cls: type) -> tuple[dict[str, str], dict[str, str]]:
    """Return {field: trailing comment} and {field: the section heading it opens} from `cls`'s source."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}  # line -> comment text (1-based lines of `source`)
    own_line: dict[int, str] = {}  # comments alone on their line
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if token.line[: token.start[1]].strip():
                comments[token.start[0]] = text
            else:
                own_line[token.start[0]] = token.string.strip()
    trailing: dict[str, str] = {}
    sections: dict[str, str] = {}
    pending_section = ""
    last_line = 0
    class_node = ast.parse(source).body[0]
    for node in class_node.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        for line in range(last_line + 1, node.lineno):
            match = _SECTION.match(own_line.get(line, ""))
            if match:
                pending_section = match.group(1)
        last_line = node.end_lineno or node.lineno
        name = node.target.id
        if pending_section:
            sections[name], pending_section = pending_section, ""
        for line in range(node.lineno, last_line + 1):
            if line in comments:
                trailing[name] = comments[line]
    return trailing, sections


def _literal(value: object) -> str:
    """Return `value` as the notebooks' parameters cell writes it (a string in double quotes)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def _cell(text: str) -> str:
    """Return `text` for a Markdown table cell: pipes escaped, and `<...>` outside code spans shown, not taken as HTML."""
    parts = text.replace("|", "\\|").replace("\n", " ").strip().split("`")
    for index in range(0, len(parts), 2):  # even parts lie outside code spans
        parts[index] = parts[index].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def parameter_rows() -> list[tuple[str, str, str, str]]:
    """Return (section, name, default, description) per StudyParams field, in declaration order.

    Raises:
        ValueError: a field has neither a trailing comment nor an entry in `DESCRIPTIONS`, or `DESCRIPTIONS`
            describes a field that does not exist.
    """
    trailing, sections = _class_comments(StudyParams)
    fields = [f.name for f in dataclasses.fields(StudyParams)]
    undocumented = [name for name in fields if not trailing.get(name) and not DESCRIPTIONS.get(name)]
    unknown = sorted(set(DESCRIPTIONS) - set(fields))
    problems = []
    if undocumented:
        problems.append(
            f"StudyParams fields {undocumented} have no description: add a trailing `# ...` comment in "
            "fisherlib/run/params.py or an entry in fisherlib.run.parameter_docs.DESCRIPTIONS"
        )
    if unknown:
        problems.append(f"parameter_docs.DESCRIPTIONS describes {unknown}, which StudyParams no longer has")
    if problems:
        raise ValueError("; ".join(problems))
    defaults = StudyParams()
    return [
        (sections.get(name, ""), name, _literal(getattr(defaults, name)), _description(name, trailing.get(name, "")))
        for name in fields
    ]


def _description(name: str, comment: str) -> str:
    """Return DESCRIPTIONS' text for `name`, then its comment from StudyParams (either may be missing)."""
    return "; ".join(part for part in (DESCRIPTIONS.get(name, ""), comment) if part)


def parameters_markdown() -> str:
    """Return the README's parameter block (without the markers): `| parameter | default | what it does |`."""
    lines = [GENERATED_NOTE, "", "| parameter | default | what it does |", "|---|---|---|"]
    for section, name, default, description in parameter_rows():
        if section:
            lines.append(f"| *{_cell(section)}* | | |")
        lines.append(f"| `{name}` | `{_cell(default)}` | {_cell(description)} |")
    return "\n".join(lines) + "\n"


def readme_block(readme_text: str) -> str:
    """Return the text between the README's `BEGIN` and `END` markers (without them and their newlines)."""
    start, end = readme_text.find(BEGIN), readme_text.find(END)
    if start < 0 or end < start or readme_text.count(BEGIN) != 1 or readme_text.count(END) != 1:
        raise ValueError(f"the README must hold {BEGIN} and then {END} exactly once")
    return readme_text[start + len(BEGIN) : end].removeprefix("\n")


def refresh_readme(path: str | Path) -> bool:
    """Rewrite the parameter block of the README at `path` from StudyParams. Return whether it changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    block = readme_block(text)
    fresh = parameters_markdown()
    if block == fresh:
        return False
    start = text.find(BEGIN) + len(BEGIN)
    updated = text[:start] + "\n" + fresh + text[text.find(END) :]
    atomic_write_text(path, updated)
    return True
