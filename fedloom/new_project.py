"""`fedloom new PROJECT`: a project folder with a training plan, an experiment TOML and a README.

The files come from `fedloom/project_template/`, with the project's name and tag filled in;
as made they run on CSV files with 8 features and a 0/1 target (see the README they include).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from common.errors import ConfigurationError

__all__ = ["TEMPLATE_DIR", "TEMPLATE_FILES", "create_project", "register"]

#: Where the template files live (shipped as package data).
TEMPLATE_DIR = Path(__file__).resolve().parent / "project_template"

#: The files a new project gets, in the order they are listed.
TEMPLATE_FILES = ("plan.py", "experiment.toml", "README.md")

# A name that is a valid folder, TOML string, tag and experiment folder everywhere.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `new` command."""
    parser = sub.add_parser(
        "new",
        help="create a project: a training plan, an experiment TOML and a README",
        description="Create PROJECT/ with plan.py, experiment.toml and README.md, ready to run "
        "on CSV files with 8 feature columns and a 0/1 target `y`; its README says how.",
    )
    parser.add_argument("project", type=Path, help="folder to create (its name names the project)")
    parser.add_argument(
        "--tag", default=None, help="dataset tag the experiment asks for (default: #PROJECT)"
    )
    parser.set_defaults(func=cmd_new)


def create_project(folder: Path, tag: str | None = None) -> list[Path]:
    """Write the template into `folder` (new or empty) and return the files written."""
    name = folder.resolve().name
    if not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"project name {name!r} must start with a letter or digit and hold only letters, "
            "digits, '.', '_' and '-': choose another folder name"
        )
    tag = tag or f"#{name}"
    if not tag.startswith("#") or len(tag) < 2 or any(c in tag for c in ' ,"\\'):
        raise ConfigurationError(
            f"tag {tag!r} must start with '#' and hold no spaces, commas, quotes or "
            "backslashes, e.g. --tag '#cohort'"
        )
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigurationError(
            f"{folder} already exists and is not an empty folder: choose a new project folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name in TEMPLATE_FILES:
        text = (TEMPLATE_DIR / file_name).read_text(encoding="utf-8")
        text = text.replace("__PROJECT__", name).replace("__TAG__", tag)
        path = folder / file_name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def cmd_new(args: argparse.Namespace) -> int:
    """Create the project and say where to start."""
    try:
        files = create_project(args.project, args.tag)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"created {args.project}/: " + ", ".join(p.name for p in files))
    print(f"next: follow {args.project / 'README.md'} (data, nodes, then researcher run)")
    return 0
