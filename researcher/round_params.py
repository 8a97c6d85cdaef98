"""Global parameters after each round, kept on disk so memory does not grow with rounds."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.payload import read_payload_file, write_payload_file

__all__ = ["AggregatedParams", "NodeParams", "NodeParamsStore"]


class AggregatedParams(Mapping[int, dict[str, Any]]):
    """round -> {"params": {name: array}, "params_path": file}, as Fed-BioMed's aggregated_params().

    Each round's parameters are written once to `folder/round_NNNNNN.bin` (fedloom's payload
    format, no pickle); only the latest round stays in memory, older ones are read back
    (memory-mapped) when asked for.
    """

    def __init__(self, folder: Callable[[], Path]) -> None:
        self._folder = folder
        self._paths: dict[int, Path] = {}
        self._latest: tuple[int, dict[str, np.ndarray]] | None = None

    def restore(self, up_to: int, latest: Mapping[str, np.ndarray] | None) -> None:
        """After loading a checkpoint of round `up_to`: find the rounds already on disk."""
        self._paths = {}
        folder = self._folder()
        if folder.is_dir():
            for path in folder.glob("round_*.bin"):
                rnd = int(path.stem.split("_")[1])
                if rnd <= up_to:
                    self._paths[rnd] = path
        self._latest = (up_to, dict(latest)) if latest is not None and up_to else None
        if self._latest is not None and up_to not in self._paths:
            self.record(up_to, self._latest[1])

    def record(self, round_number: int, params: Mapping[str, np.ndarray]) -> None:
        """Store the parameters after `round_number` (replacing a replayed round's)."""
        folder = self._folder()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"round_{round_number:06d}.bin"
        write_payload_file(path, params)
        self._paths[round_number] = path
        self._latest = (round_number, dict(params))

    def __getitem__(self, round_number: int) -> dict[str, Any]:
        path = self._paths[round_number]
        if self._latest is not None and self._latest[0] == round_number:
            params = self._latest[1]
        else:
            params = read_payload_file(path).arrays()
        return {"params": params, "params_path": str(path)}

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._paths))

    def __len__(self) -> int:
        return len(self._paths)


class NodeParams(Mapping[str, "np.ndarray"]):
    """One node's parameters of one round, read from disk when first asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._arrays: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = read_payload_file(self.path).arrays()
        return self._arrays

    def __getitem__(self, name: str) -> np.ndarray:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


class NodeParamsStore:
    """Each node's parameters per round, on disk (`retain_node_params=True`).

    Files are `folder/round_NNNNNN/<node id>.bin`; nothing stays in memory, so keeping
    them costs disk, not researcher memory, whatever the number of rounds and nodes.
    """

    def __init__(self, folder: Callable[[], Path]) -> None:
        self._folder = folder

    def writer(self, round_number: int) -> Callable[[str, Mapping[str, np.ndarray]], None]:
        """A sink the round engine calls with each accepted node's parameters."""

        def keep(node_id: str, params: Mapping[str, np.ndarray]) -> None:
            folder = self._folder() / f"round_{round_number:06d}"
            folder.mkdir(parents=True, exist_ok=True)
            write_payload_file(folder / f"{node_id}.bin", params)

        return keep

    def get(self, round_number: int, node_id: str) -> NodeParams | None:
        path = self._folder() / f"round_{round_number:06d}" / f"{node_id}.bin"
        return NodeParams(path) if path.exists() else None
