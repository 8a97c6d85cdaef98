"""The code in docs/ and README.md is correct for the current API.

- Python blocks: each page's blocks run in order as one module (so a plan defined in one
  block serves the experiment of the next, and plan sources can be read back). A block stops
  at its first top-level `exp.run(...)`: running needs a federation (the end-to-end tests
  run one), and what follows reads its results.
  A block preceded by `<!-- snippet: needs-project -->` runs inside a `fedloom new` project.
- TOML blocks parse; a `needs-project` TOML block is validated as that project's experiment.
- Every `fedloom ...` command line in a bash block parses with the real argument parser.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedloom.cli import build_parser
from fedloom.new_project import create_project
from researcher.config import load_experiment_config
from tests.conftest import ROOT

PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
NEEDS_PROJECT = "<!-- snippet: needs-project -->"
_FENCE = re.compile(r"^```(\w*)\s*$")
#: Shell tokens after which a command line's own arguments end.
_SHELL_STOPS = {"|", "||", "&", "&&", ";", ">", ">>", "2>&1", "<"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    needs_project: bool


def _blocks(page: Path) -> list[Block]:
    blocks = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i].strip())
        if opening is None:
            i += 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip())
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:])
            i += 1
        marker = start > 0 and lines[start - 1].strip() == NEEDS_PROJECT
        blocks.append(Block(page, start + 1, opening.group(1), "\n".join(body), marker))
        i += 1
    return blocks


def _page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _is_run_call(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr in ("run", "run_once")
    )


def _without_run_calls(code: str) -> str:
    """The block up to its first top-level `<obj>.run(...)` / `.run_once(...)` statement."""
    tree = ast.parse(code)
    first_run = next((i for i, n in enumerate(tree.body) if _is_run_call(n)), len(tree.body))
    tree.body = tree.body[:first_run]
    return ast.unparse(tree)


def _pages_with(lang: str) -> list[Path]:
    return [p for p in PAGES if any(b.lang == lang for b in _blocks(p))]


@pytest.mark.parametrize("page", _pages_with("python"), ids=_page_id)
def test_python_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDLOOM_OUT", str(tmp_path / "runs"))
    blocks = [b for b in _blocks(page) if b.lang == "python"]
    if any(b.needs_project for b in blocks):
        create_project(tmp_path / "study")
        monkeypatch.syspath_prepend(str(tmp_path / "study"))
        monkeypatch.delitem(sys.modules, "plan", raising=False)
    parts = []
    for block in blocks:
        try:
            code = _without_run_calls(block.code)
        except SyntaxError as exc:
            pytest.fail(f"{_page_id(page)}:{block.line + (exc.lineno or 0)}: {exc.msg}")
        parts.append(f"# ---- {_page_id(page)} line {block.line}\n{code}\n")
    module_path = tmp_path / "snippets.py"
    module_path.write_text("\n".join(parts), encoding="utf-8")
    name = f"docs_snippets_{page.stem.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, module_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered so that training plans defined by the snippets can be read back as source.
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)


@pytest.mark.parametrize("page", _pages_with("toml"), ids=_page_id)
def test_toml_snippets_parse(page: Path, tmp_path: Path) -> None:
    for block in (b for b in _blocks(page) if b.lang == "toml"):
        try:
            tomllib.loads(block.code)
        except tomllib.TOMLDecodeError as exc:
            pytest.fail(f"{_page_id(page)}:{block.line}: {exc}")
        if block.needs_project:
            project = tmp_path / "study"
            if not project.exists():
                create_project(project)
            (project / "experiment.toml").write_text(block.code, encoding="utf-8")
            load_experiment_config(project / "experiment.toml")


def _fedloom_commands(code: str) -> list[list[str]]:
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line.startswith("fedloom "):
            continue
        words = shlex.split(line, comments=True)
        stop = next((i for i, w in enumerate(words) if w in _SHELL_STOPS), len(words))
        commands.append(words[1:stop])
    return commands


@pytest.mark.parametrize("page", _pages_with("bash"), ids=_page_id)
def test_fedloom_command_lines_parse(page: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    checked = 0
    for block in (b for b in _blocks(page) if b.lang == "bash"):
        for argv in _fedloom_commands(block.code):
            try:
                parser.parse_args(argv)
            except SystemExit:
                error = capsys.readouterr().err.strip().splitlines()[-1:]
                pytest.fail(f"{_page_id(page)}:{block.line}: fedloom {shlex.join(argv)}: {error}")
            checked += 1
    assert checked or "fedloom" not in page.read_text()
