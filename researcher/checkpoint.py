"""Experiment checkpoints: one directory per round, written atomically, the last K kept.

A checkpoint is `<experiment folder>/checkpoints/round-NNNNNN/` holding

- `state.json`: everything JSON-able (experiment id, round, config, optimizer metadata,
  aggregator and strategy state, history);
- `params.bin`: the global parameters, a hard link to the round's parameters file
  (researcher/round_params.py), so they are written once per round, not twice;
- `arrays.bin`: every other array (optimizer state; the parameters too when no round file
  holds them) in fedloom's payload file format (`common.payload`): dtype, shape and raw
  bytes, never pickle;
- `training_plan.py`: the plan source that travels to the nodes, so the experiment can be
  rebuilt without the researcher's original script.

The directory is filled under a temporary name, synced, then renamed into place: a reader
sees a whole checkpoint or none, even if the researcher is killed while writing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigurationError, PayloadError
from common.payload_files import read_payload_file, write_payload_file
from researcher.round_params import read_params_file

__all__ = [
    "CHECKPOINTS_DIR",
    "DEFAULT_KEEP_CHECKPOINTS",
    "PLAN_FILE",
    "Checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "read_checkpoint",
    "read_checkpoint_state",
    "split_arrays",
    "write_checkpoint",
]

log = logging.getLogger(__name__)

#: Bumped whenever the layout changes incompatibly (2: parameters in `params.bin`).
CHECKPOINT_FORMAT = 2
#: Formats this version reads.
READABLE_FORMATS = (1, 2)

#: Sub-directory of the experiment folder holding the checkpoints.
CHECKPOINTS_DIR = "checkpoints"

#: Checkpoints kept per experiment. The latest is enough to resume; two older ones let a
#: researcher roll back a round that went wrong without keeping every round of a large model.
DEFAULT_KEEP_CHECKPOINTS = 3

STATE_FILE = "state.json"
ARRAYS_FILE = "arrays.bin"
PARAMS_FILE = "params.bin"
PLAN_FILE = "training_plan.py"

_ROUND_DIR = re.compile(r"^round-(\d{6,})$")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".old-"


@dataclass
class Checkpoint:
    """The saved state of an experiment after `round` rounds.

    `params` are the global parameters when they live in their own file: `params_file`
    (a round file, linked on write) or the checkpoint's `params.bin` (views, on read).
    """

    round: int
    state: dict[str, Any]
    arrays: dict[str, np.ndarray]
    plan_source: str
    path: Path | None = field(default=None, compare=False)
    params_file: Path | None = field(default=None, compare=False)
    params: dict[str, np.ndarray] | None = field(default=None, compare=False)


def _round_dir_name(round_number: int) -> str:
    return f"round-{round_number:06d}"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(
    folder: Path, checkpoint: Checkpoint, keep: int = DEFAULT_KEEP_CHECKPOINTS
) -> Path:
    """Write `checkpoint` under `folder/checkpoints/` atomically; keep the last `keep` rounds.

    Returns the checkpoint directory. Rewriting a round that already has a checkpoint (a
    resumed run replaying it) replaces the old one.
    """
    if keep < 1:
        raise ConfigurationError(f"keep_checkpoints must be at least 1, got {keep}")
    root = Path(folder) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    tmp = root / f"{_TMP_PREFIX}{_round_dir_name(checkpoint.round)}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    state = {"format": CHECKPOINT_FORMAT, "round": checkpoint.round, **checkpoint.state}
    try:
        json_text = json.dumps(state, indent=1, sort_keys=True, allow_nan=True)
    except TypeError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigurationError(f"checkpoint state is not JSON-serialisable: {exc}") from exc
    (tmp / STATE_FILE).write_text(json_text, encoding="utf-8")
    write_payload_file(tmp / ARRAYS_FILE, checkpoint.arrays, durable=True)
    (tmp / PLAN_FILE).write_text(checkpoint.plan_source, encoding="utf-8")
    names = [STATE_FILE, ARRAYS_FILE, PLAN_FILE]
    if checkpoint.params_file is not None:
        _link_or_copy(checkpoint.params_file, tmp / PARAMS_FILE)
        names.append(PARAMS_FILE)
    for name in names:
        _fsync_file(tmp / name)
    _fsync_dir(tmp)
    final = root / _round_dir_name(checkpoint.round)
    if final.exists():
        trash = root / f"{_TRASH_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    _prune(root, keep)
    log.debug("checkpoint of round %d written to %s", checkpoint.round, final)
    return final


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no second write of the parameters); a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _remove_leftovers(root: Path) -> None:
    """Delete half-written directories left by a researcher killed while checkpointing."""
    for entry in root.iterdir():
        if entry.is_dir() and entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
            shutil.rmtree(entry, ignore_errors=True)


def _prune(root: Path, keep: int) -> None:
    for old in list_checkpoints(root.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoint directories of an experiment folder, oldest round first."""
    root = Path(folder) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _ROUND_DIR.match(entry.name)
        if match and (entry / STATE_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return [path for _, path in sorted(found)]


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of the highest round in an experiment folder, or None."""
    checkpoints = list_checkpoints(folder)
    return checkpoints[-1] if checkpoints else None


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    """The JSON part of a checkpoint directory (cheap: arrays are not read)."""
    try:
        state = json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(
            f"checkpoint {path} is unreadable ({exc}): resume from an older one"
        ) from exc
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        found = state.get("format") if isinstance(state, dict) else None
        raise ConfigurationError(
            f"checkpoint {path} has format {found!r}, this fedloom reads format "
            f"{CHECKPOINT_FORMAT}: resume it with the fedloom version that wrote it"
        )
    return state


def read_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint directory, or the latest checkpoint of an experiment folder."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        latest = latest_checkpoint(path)
        if latest is None:
            raise ConfigurationError(
                f"no checkpoint in {path}: pass an experiment folder holding "
                f"'{CHECKPOINTS_DIR}/round-*' or one of those directories"
            )
        path = latest
    state = read_checkpoint_state(path)
    try:
        payload = read_payload_file(path / ARRAYS_FILE)
    except (OSError, PayloadError) as exc:
        raise ConfigurationError(f"checkpoint {path} has unreadable arrays ({exc})") from exc
    # Copies, so the arrays outlive the checkpoint directory (pruned after later rounds).
    arrays = {name: np.array(value) for name, value in payload.arrays().items()}
    params = None
    if (path / PARAMS_FILE).is_file():
        try:
            # Views over the mapping, which outlives the directory: no model-sized copy.
            params = read_params_file(path / PARAMS_FILE)
        except (OSError, PayloadError) as exc:
            raise ConfigurationError(
                f"checkpoint {path} has unreadable parameters ({exc})"
            ) from exc
    plan_source = (path / PLAN_FILE).read_text(encoding="utf-8")
    state.pop("format")
    round_number = int(state.pop("round"))
    return Checkpoint(
        round=round_number,
        state=state,
        arrays=arrays,
        plan_source=plan_source,
        path=path,
        params=params,
    )


def split_arrays(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays whose names start with `prefix/`, with the prefix removed."""
    start = prefix + "/"
    return {name[len(start) :]: value for name, value in arrays.items() if name.startswith(start)}
