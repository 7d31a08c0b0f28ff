"""JSON Lines read back: one JSON value a line, blank lines skipped, a bad line named by its file and number."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def jsonl_records(lines: Iterable[str], bad_line: Callable[[int, json.JSONDecodeError], Exception]) -> Iterator[tuple[int, Any]]:
    """Yield `(line number, value)` for every non-blank line of `lines` (numbered from 1).

    A line that is not JSON raises `bad_line(number, error)`: the caller's own error type and message.
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise bad_line(number, error) from error
        yield number, record
