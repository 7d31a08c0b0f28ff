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
GENERATED_NOTE = "<!-- generated from fisherlib.run.params.StudyParams by `python tools/readme_parameters.py --write`; do not edit by hand -->"

# What each field is, for the fields whose trailing comment in StudyParams is missing or only explains a
# special value ("empty: ..."): the table shows this text, then the comment. An entry for a field that no
# longer exists is an error.
DESCRIPTIONS = {
    "arch": "the model: a registry name (`tiny`, `pythia`, `llama`, `qwen`), any causal-LM hub id (`org/name`) or a local Hugging Face model folder",
    "n_positions": "positions sampled per seed, equal shares per corpus and per effective-rank quintile (the write-up used about 4000)",
    "seed": "seed of the position sampling and of the random and control directions",
    "top_k": "tokens kept in the truncated Fisher F_k (the k most probable, p_K not renormalised); the control directions need `top_k` < d",
    "eps_grid": "the KL thresholds ε (nats) at which every boundary t_emp is found; must contain `small_eps` and `large_eps`",
    "divergence": '`"forward"` KL(p ‖ q_t), the write-up\'s, or `"reverse"` KL(q_t ‖ p) (censored where ε is above its bound)',
    "n_random": "random unit directions per position (seeded)",
    "n_control": "control directions per position: random directions orthogonal to the rows of W_K (uᵀF_k u ≈ 0, so t_pred = ∞)",
    "batch_size": "contexts per forward pass (a memory and speed setting)",
    "max_context": "tokens kept from the start of each document (must fit the model's positions)",
    "min_prefix": "the target index is uniform over the tokens after this many tokens of context",
    "pool_factor": "candidate pool size as a multiple of `n_positions`, cut into effective-rank quintiles",
    "corpora": "corpora to sample, equal shares: hub names (`gsm8k`, `codeparrot`, `ultrachat`, `wikitext`), "
    "the embedded `stdlib-code` and `stdlib-docs`, or local `.jsonl` / `.txt` files as `PATH` or `DOMAIN=PATH`",
    "seeds": "seeds to run",
    "device": "torch device (`cpu`, `cuda`, `cuda:1`, ...), or `auto`: a model larger than one GPU spread over "
    'every GPU (accelerate\'s `device_map="auto"`)',
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
    return [(sections.get(name, ""), name, _literal(getattr(defaults, name)), _description(name, trailing.get(name, ""))) for name in fields]


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


# --- which parameters each notebook reads ------------------------------------------------------------
#
# A notebook reads a parameter when its code reads `params.<name>` (a property such as `seed_list` reads
# the fields it is built from), or passes `params` to a fisherlib function that does, at any depth: an
# attribute read, or a name in a cache key (`params.key("a", *SAMPLE_KEYS)`). Recording every parameter
# with a table (`params.as_dict()`) and validating them (`StudyParams.create`) are not reads.

_PACKAGE = Path(__file__).resolve().parents[1]
_NOT_READS = {"as_dict", "key", "create", "from_namespace"}


class _Module:
    """One fisherlib module's functions, module-level constants and imported names."""

    def __init__(self, name: str, tree: ast.Module):
        self.name = name
        self.functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.constants = {
            n.targets[0].id: n.value for n in tree.body if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
        }  # fmt: skip
        self.imports: dict[str, str] = {}  # local name -> "module" or "module:attribute"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = _absolute(name, node.module, node.level)
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = f"{base}:{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    self.imports[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]


def _absolute(module: str, target: str | None, level: int) -> str:
    if not level:
        return target or ""
    parts = module.split(".")[:-level]
    return ".".join([*parts, *([target] if target else [])])


class _ReadFinder:
    """Follow `params` through fisherlib's source and collect the StudyParams fields it reads."""

    def __init__(self):
        self.modules: dict[str, _Module] = {}
        self.fields = {f.name for f in dataclasses.fields(StudyParams)}
        self.properties = {name: self._property_reads(value) for name, value in vars(StudyParams).items() if isinstance(value, property)}
        self._seen: set[tuple[str, str, str]] = set()
        self._cache: dict[tuple[str, str, str], set[str]] = {}  # (module, function, argument) -> names read

    def _property_reads(self, prop: property) -> set[str]:
        tree = ast.parse(textwrap.dedent(inspect.getsource(prop.fget)))
        return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"}

    def expand(self, names) -> set[str]:
        """Return the fields behind `names` (fields stay, properties become the fields they read, others go)."""
        out, todo = set(), list(names)
        while todo:
            name = todo.pop()
            if name in self.fields:
                out.add(name)
            elif name in self.properties and name not in out:
                out.add(name)
                todo += self.properties[name]
        return out & self.fields

    def module(self, name: str) -> _Module | None:
        if name not in self.modules:
            path = _PACKAGE.parent / Path(*name.split("."))
            file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            if not name.startswith("fisherlib") or not file.is_file():
                return None
            self.modules[name] = _Module(name, ast.parse(file.read_text(encoding="utf-8")))
        return self.modules[name]

    def resolve(self, scope: _Module, func: ast.expr) -> tuple[_Module, ast.FunctionDef] | None:
        """Return the module and definition of the function `func` names in `scope`, where it is fisherlib's."""
        if isinstance(func, ast.Name):
            if func.id in scope.functions:
                return scope, scope.functions[func.id]
            target = scope.imports.get(func.id, "")
            if ":" in target:
                module, attribute = target.split(":")
                found = self.module(module)
                if found is None or attribute in found.functions:
                    return (found, found.functions[attribute]) if found else None
                return self.resolve(found, ast.Name(attribute)) if attribute in found.imports else None
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            target = scope.imports.get(func.value.id, "")
            module = target.replace(":", ".") if target else ""
            found = self.module(module) if module else None
            if found is not None:
                return self.resolve(found, ast.Name(func.attr))
        return None

    def strings(self, scope: _Module, body: ast.AST, node: ast.expr) -> set[str]:
        """Return the strings a cache-key argument spells: a literal, or a tuple (named here or at module level)."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.Starred):
            return self.strings(scope, body, node.value)
        if isinstance(node, (ast.Tuple, ast.List)):
            return set().union(*(self.strings(scope, body, e) for e in node.elts)) if node.elts else set()
        if isinstance(node, ast.Name):
            assigned = [n for n in ast.walk(body) if isinstance(n, ast.Assign)]
            local = [n.value for n in assigned if any(isinstance(t, ast.Name) and t.id == node.id for t in n.targets)]
            if local:
                return set().union(*(self.strings(scope, body, v) for v in local))
            if node.id in scope.constants:
                return self.strings(scope, body, scope.constants[node.id])
            target = scope.imports.get(node.id, "")
            if ":" in target:
                module, attribute = target.split(":")
                found = self.module(module)
                if found is not None:
                    return self.strings(found, body, ast.Name(attribute))
        return set()

    def reads(self, scope: _Module, body: ast.AST, name: str) -> set[str]:
        """Return the names read through variable `name` (bound to the parameters) in `body`, following calls."""
        found: set[str] = set()
        for node in ast.walk(body):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == name and node.attr not in _NOT_READS:
                found.add(node.attr)
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "key" and isinstance(func.value, ast.Name) and func.value.id == name:
                for arg in node.args:
                    found |= self.strings(scope, body, arg)
                continue
            passed = [(i, None) for i, a in enumerate(node.args) if isinstance(a, ast.Name) and a.id == name]
            passed += [(None, k.arg) for k in node.keywords if isinstance(k.value, ast.Name) and k.value.id == name]
            if not passed:
                continue
            target = self.resolve(scope, func)
            if target is None:
                continue
            module, definition = target
            positional = [a.arg for a in (*definition.args.posonlyargs, *definition.args.args)]
            for index, keyword in passed:
                inner = keyword if keyword is not None else (positional[index] if index < len(positional) else None)
                if inner is None:
                    continue
                key = (module.name, definition.name, inner)
                if key not in self._seen:
                    self._seen.add(key)
                    self._cache[key] = self.reads(module, definition, inner)
                found |= self._cache.get(key, set())
        return found


def notebook_reads(source: str) -> set[str]:
    """Return the StudyParams fields that notebook code `source` reads, directly or through fisherlib (see above)."""
    finder = _ReadFinder()
    scope = _Module("__notebook__", ast.parse(source))
    return finder.expand(finder.reads(scope, ast.parse(source), "params"))


def _code_cells(path: Path) -> list[dict]:
    notebook = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = []
    for cell in notebook["cells"]:
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            cells.append({**cell, "source": "".join(source) if isinstance(source, list) else source})
    return cells


def _is_parameters(cell: dict) -> bool:
    return "parameters" in cell.get("metadata", {}).get("tags", [])


def notebook_reads_file(path: str | Path) -> set[str]:
    """Return the parameters notebook `path` reads, from its code cells other than the parameters cell."""
    lines = [
        line for cell in _code_cells(path) if not _is_parameters(cell)
        for line in cell["source"].splitlines() if not line.lstrip().startswith(("%", "!"))
    ]  # fmt: skip
    return notebook_reads("\n".join(lines))


def notebook_cell_names(path: str | Path) -> list[str]:
    """Return the names notebook `path`'s parameters cell holds: the run's identity and the parameters it reads.

    The output locations (`OUTPUT_LOCATION_FIELDS`: where tables, figures and caches go, which `make` passes)
    are left out; like every parameter, they are accepted all the same. Declaration order.
    """
    from .params import OUTPUT_LOCATION_FIELDS, RUN_IDENTITY

    chosen = (set(RUN_IDENTITY) | notebook_reads_file(path)) - set(OUTPUT_LOCATION_FIELDS)
    return [f.name for f in dataclasses.fields(StudyParams) if f.name in chosen]


def notebook_cell_source(path: str | Path) -> str:
    """Return the source notebook `path`'s parameters cell should hold (`notebook_cell_names` at their defaults)."""
    from .params import parameters_cell_source

    return parameters_cell_source(notebook_cell_names(path))


def parameters_cell(path: str | Path) -> str:
    """Return the source of notebook `path`'s one cell tagged `parameters` (ValueError when there is not exactly one)."""
    cells = [cell for cell in _code_cells(path) if _is_parameters(cell)]
    if len(cells) != 1:
        raise ValueError(f"{Path(path).name}: expected one cell tagged 'parameters', found {len(cells)}")
    return cells[0]["source"]
