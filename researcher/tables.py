"""Tables of numbers that stay readable at any width, on a terminal or piped into a file.

Numbers are never cut: on a terminal, a table too wide for the console first wraps its
column names (at `_` and spaces) and long text cells, then splits into several tables that
each repeat the key columns. Off a terminal (CI logs, `| tee`) it prints plain aligned text of its full width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Column", "print_table"]

#: Characters a column costs beyond its content in the rich layout below: one space of
#: padding each side and one blank column rule (box.SIMPLE_HEAD), plus one for the edge.
COLUMN_OVERHEAD = 3
TABLE_OVERHEAD = 1

#: Width at which a text cell (a name, a state, an error) wraps once the table is too wide:
#: enough for a node or run name on one line; numbers never wrap.
TEXT_WRAP_WIDTH = 30

#: Spaces between columns in plain text.
PLAIN_GAP = "  "


@dataclass(frozen=True)
class Column:
    """A column: its name, and whether its cells are numbers (right-aligned, never cut)."""

    name: str
    numeric: bool = True


def print_table(
    console: Any,
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    key_columns: int = 1,
) -> None:
    """Print `rows` under `columns` on a rich `console`; the first `key_columns` identify a row."""
    if not console.is_terminal:
        console.print(_plain(title, columns, rows), markup=False, highlight=False, soft_wrap=True)
        return
    cells = [max((len(r[i]) for r in rows), default=0) for i in range(len(columns))]
    full = [max(w, len(c.name)) for w, c in zip(cells, columns, strict=True)]
    if _span(full) <= console.width:
        groups, widths = [list(range(len(columns)))], full
    else:
        widths = [
            max(w if c.numeric else min(w, TEXT_WRAP_WIDTH), _longest_word(c.name))
            for w, c in zip(cells, columns, strict=True)
        ]
        groups = _groups(widths, key_columns, console.width)
    for index, group in enumerate(groups):
        part = title if len(groups) == 1 else f"{title} ({index + 1}/{len(groups)})"
        console.print(_rich_table(part, columns, rows, group, widths))


def _span(widths: Sequence[int]) -> int:
    return sum(widths) + COLUMN_OVERHEAD * len(widths) + TABLE_OVERHEAD


def _words(name: str) -> list[str]:
    """`local_accuracy` -> [`local_`, `accuracy`]: a name may break after `_` or a space."""
    return name.replace("_", "_ ").split()


def _longest_word(name: str) -> int:
    return max(len(word) for word in _words(name))


def _wrap_name(name: str, width: int) -> str:
    """The name on as few lines of at most `width` characters as its words allow."""
    lines: list[str] = []
    for word in _words(name):
        joiner = "" if lines and lines[-1].endswith("_") else " "
        if lines and len(lines[-1]) + len(joiner) + len(word) <= width:
            lines[-1] += joiner + word
        else:
            lines.append(word)
    return "\n".join(lines)


def _groups(widths: Sequence[int], key_columns: int, width: int) -> list[list[int]]:
    """Column indices per table: the key columns, then as many others as fit the width."""
    keys = list(range(min(key_columns, len(widths))))
    groups: list[list[int]] = []
    current = list(keys)
    for index in range(len(keys), len(widths)):
        if len(current) > len(keys) and _span([widths[i] for i in (*current, index)]) > width:
            groups.append(current)
            current = list(keys)
        current.append(index)
    groups.append(current)
    return groups


def _rich_table(
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    indices: Sequence[int],
    widths: Sequence[int],
) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for index in indices:
        column, width = columns[index], widths[index]
        justify: Literal["right", "left"] = "right" if column.numeric else "left"
        table.add_column(
            Text(_wrap_name(column.name, width), justify=justify),
            justify=justify,
            width=width,
            no_wrap=column.numeric,
            overflow="fold",
        )
    for row in rows:
        table.add_row(*(Text(row[i]) for i in indices))
    return table


def _plain(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> str:
    names = [c.name.replace("\n", " ") for c in columns]
    widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]

    def line(cells: Sequence[str]) -> str:
        return PLAIN_GAP.join(
            cell.rjust(w) if column.numeric else cell.ljust(w)
            for cell, w, column in zip(cells, widths, columns, strict=True)
        ).rstrip()

    return "\n".join([title, line(names), *(line(r) for r in rows)])
