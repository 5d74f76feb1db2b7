"""Result tables: the scalars of a result JSON as columns, and the markdown tables the scripts print.

Shared by the dashboard (``ddpm/dashboard/runs.py``), the sweep collector and the measuring scripts,
so that a result file reads as the same columns and a table prints the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Scalars of nested dicts as ``{"a.b": value}``; lists and a top-level ``config`` are left out.

    Args:
        obj: a parsed result JSON (``metrics.json``, ``regimes.json``, ...).
        prefix: the dotted path of ``obj`` inside the top-level object ('' at the top).
    """
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not prefix and k == "config":  # the run's whole config: not a result
                continue
            out.update(flatten(v, f"{prefix}{k}."))
    elif not isinstance(obj, list):
        out[prefix[:-1]] = obj
    return out


def format_cell(value: Any, float_format: str = ".4g") -> str:
    """A table cell: a float by ``float_format``, anything else as ``str``.

    Args:
        value: the cell's value.
        float_format: a format spec for floats (``.4g``, ``.2f``, ...).
    """
    return format(value, float_format) if isinstance(value, float) else str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], float_format: str = ".4g", align_right: bool = False) -> str:
    """A markdown table, one line per row, without a trailing newline.

    Args:
        header: the column names.
        rows: the cells of each row (as many as ``header``), formatted by :func:`format_cell`.
        float_format: the format spec of float cells.
        align_right: right-align every column but the first (columns of numbers).
    """

    def line(cells: Iterable[Any]) -> str:
        return "| " + " | ".join(format_cell(c, float_format) for c in cells) + " |"

    separator = "|---|" + ("---:|" if align_right else "---|") * (len(header) - 1)
    return "\n".join([line(header), separator, *(line(r) for r in rows)])
