"""Tables at any width: numbers whole on every terminal width, plain text off a terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from researcher.tables import Column, print_table

METRICS = [Column("round"), *(Column(f"metric_{i}") for i in range(8))]
ROW = ["1", *(f"{0.1234567 * i:.4f}" for i in range(8))]


def _render(width: int, columns: list[Column], rows: list[list[str]]) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    print_table(console, "t", columns, rows)
    return out.getvalue()


@pytest.mark.parametrize("width", range(40, 131, 3))
def test_every_number_is_whole_and_every_line_fits_at_any_width(width: int) -> None:
    text = _render(width, METRICS, [ROW])
    assert all(cell in text for cell in ROW[1:])
    assert all(len(line) <= width for line in text.splitlines())
    assert "…" not in text


def test_long_text_cells_wrap_so_the_numbers_keep_their_room() -> None:
    columns = [Column("run", numeric=False), Column("state", numeric=False), Column("loss")]
    error = "failed: only 0 node(s) answered, at least 2 needed (north: disconnected)"
    text = _render(60, columns, [["a-run-with-a-rather-long-name", error, "0.6750"]])
    assert "0.6750" in text and all(len(line) <= 60 for line in text.splitlines())
    assert "disconnected" in text  # wrapped, not cut


def test_off_a_terminal_the_table_is_plain_text_with_aligned_columns() -> None:
    out = io.StringIO()
    print_table(Console(file=out, width=40), "t", METRICS, [ROW, ["10", *ROW[1:]]])
    lines = out.getvalue().splitlines()
    assert lines[0] == "t" and lines[1].split() == [c.name for c in METRICS]
    assert lines[2].split() == ROW and lines[3].startswith("   10")  # right-aligned
    assert len(lines[2]) == len(lines[1]) > 40
