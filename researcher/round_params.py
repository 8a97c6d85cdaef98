"""Global parameters after each round, kept on disk so memory does not grow with rounds."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.payload import UNSPECIFIED, EncodedPayload
from common.payload_files import read_payload_file, write_payload_file, write_sections_file
from common.proto import fedloom_pb2 as pb

__all__ = [
    "AggregatedParams",
    "NodeParams",
    "NodeParamsStore",
    "RoundFile",
    "read_params_file",
    "write_npz",
]


class RoundFile:
    """One round's global parameters on disk, memory-mapped: what the next round publishes.

    The file is laid out as the global payload's parameters section, so the next round
    serves it to the nodes as is (`payload`) and the checkpoint links it instead of writing
    the parameters again; `params` are read-only views over the same mapping.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.payload: EncodedPayload = read_payload_file(path)
        self.params: dict[str, np.ndarray] = _params_of(self.payload)


#: Bytes read from a round file at a time when copying it into an .npz.
_NPZ_READ = 4 << 20


def write_npz(path: Path, params: Mapping[str, np.ndarray], source: RoundFile | None) -> None:
    """`np.savez(path, **params)`, streamed with `pread` from `source` when `params` are its
    views: the model's pages never become the researcher's resident memory."""
    fd = None
    if source is not None and source.payload.source is not None and params is source.params:
        fd = source.payload.source.open()
    if fd is None:
        np.savez(path, allow_pickle=False, **params)
        return
    assert source is not None and source.payload.source is not None
    base = source.payload.source.offset
    specs = {spec.name: spec for spec in source.payload.manifest.arrays}
    try:
        # As np.savez lays it out: one stored (uncompressed) .npy member per array.
        with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, view in params.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    header = np.lib.format.header_data_from_array_1_0(view)  # metadata only
                    try:  # the version np.savez picks: 1.0 unless the header is too long
                        np.lib.format.write_array_header_1_0(member, header)
                    except ValueError:
                        np.lib.format.write_array_header_2_0(member, header)
                    spec = specs[name]
                    for start in range(0, spec.nbytes, _NPZ_READ):
                        size = min(_NPZ_READ, spec.nbytes - start)
                        member.write(os.pread(fd, size, base + spec.offset + start))
    finally:
        os.close(fd)


def _params_of(payload: EncodedPayload) -> dict[str, np.ndarray]:
    sections = payload.sections()
    return dict(sections.get(pb.PAYLOAD_SECTION_PARAMS, sections.get(UNSPECIFIED, {})))


def read_params_file(path: Path) -> dict[str, np.ndarray]:
    """Parameters from a round file (or an older single-purpose payload file), as views."""
    return _params_of(read_payload_file(path))


class AggregatedParams(Mapping[int, dict[str, Any]]):
    """round -> {"params": {name: array}, "params_path": file}, as Fed-BioMed's aggregated_params().

    Each round's parameters are written once to `folder/round_NNNNNN.bin` (fedloom's payload
    format, parameters section, no pickle), which the checkpoint links and the next round
    publishes; every round is read back memory-mapped when asked for.
    """

    def __init__(self, folder: Callable[[], Path]) -> None:
        self._folder = folder
        self._paths: dict[int, Path] = {}
        self._latest: tuple[int, RoundFile] | None = None

    def restore(self, up_to: int, latest: Mapping[str, np.ndarray] | None) -> None:
        """After loading a checkpoint of round `up_to`: find the rounds already on disk."""
        self._paths = {}
        folder = self._folder()
        if folder.is_dir():
            for path in folder.glob("round_*.bin"):
                rnd = int(path.stem.split("_")[1])
                if rnd <= up_to:
                    self._paths[rnd] = path
        self._latest = None
        if latest is not None and up_to:
            # Rewritten from the checkpoint: the file on disk may come from a dropped run.
            self.record(up_to, latest)

    def record(self, round_number: int, params: Mapping[str, np.ndarray]) -> RoundFile:
        """Write the parameters after `round_number` once (replacing a replayed round's)."""
        folder = self._folder()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"round_{round_number:06d}.bin"
        # Durable now: the checkpoint links this file, and its fsync then finds it clean.
        write_sections_file(path, {pb.PAYLOAD_SECTION_PARAMS: params}, durable=True)
        self._paths[round_number] = path
        self._latest = (round_number, RoundFile(path))
        return self._latest[1]

    def latest(self) -> RoundFile | None:
        """The last recorded round's file, mapped."""
        return None if self._latest is None else self._latest[1]

    def __getitem__(self, round_number: int) -> dict[str, Any]:
        path = self._paths[round_number]
        if self._latest is not None and self._latest[0] == round_number:
            params = self._latest[1].params
        else:
            params = read_params_file(path)
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
