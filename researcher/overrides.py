"""`--set KEY=VALUE`: override any key of a TOML experiment before it is validated.

KEY is a dotted path into the document (`training_args.batch_size`, `strategy.min_nodes`,
`name`); VALUE is read as a TOML value (`64`, `0.1`, `true`, `["#a", "#b"]`, `"text"`), and
as a plain string when it is not one (`--set name=trial-3`). The overridden document then
goes through the same validation as the file, so a bad key or value gets the same message.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from common.errors import ConfigurationError

__all__ = ["apply_overrides", "parse_override"]


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=1` -> (["a", "b"], 1)."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(part.strip() for part in path):
        raise ConfigurationError(
            f"--set {text!r}: expected KEY=VALUE with a dotted KEY, e.g. "
            "--set training_args.batch_size=64"
        )
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return [part.strip() for part in path], value


def apply_overrides(document: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of the parsed TOML `document` with each `KEY=VALUE` of `overrides` set, in order."""
    result = copy.deepcopy(dict(document))
    for text in overrides:
        path, value = parse_override(text)
        table: dict[str, Any] = result
        for depth, part in enumerate(path[:-1]):
            child = table.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigurationError(
                    f"--set {text!r}: {where} is a {type(child).__name__}, not a table, so it "
                    f"has no key {path[depth + 1]!r}"
                )
            table = child
        table[path[-1]] = value
    return result
