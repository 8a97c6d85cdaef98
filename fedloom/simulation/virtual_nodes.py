"""The virtual nodes: one shard of the data each, written once to disk, and how the round
engine sees them (a `NodeView`, like a connected node's)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.data_split import parse_split
from common.split_files import split_file
from researcher.node_directory import DatasetSummary

__all__ = ["VirtualNode", "write_shards"]

#: File written last in a shard folder: its presence says every shard is complete.
SHARDS_DONE = "split.json"


@dataclass
class VirtualNode:
    """A simulated node: its id, name and single dataset (its shard), tagged with the
    experiment's tags so the strategy finds it as it would a real node."""

    node_id: str
    name: str
    shard: Path
    dataset: DatasetSummary
    #: The class column (CSV) or array (NPZ), given to the plan as a node's dataset target.
    target: str | None = None
    known_plans: set[str] = field(default_factory=set)
    secagg_public_key: bytes = b""

    @property
    def label(self) -> str:
        return self.name

    @property
    def datasets(self) -> tuple[DatasetSummary, ...]:
        return (self.dataset,)

    def matching_dataset(self, tags: Sequence[str]) -> DatasetSummary | None:
        return self.dataset if self.dataset.matches(tags) else None


def write_shards(
    data: Path,
    nodes: int,
    split: str,
    seed: int,
    target: str | None,
    tags: Sequence[str],
    folder: Path,
) -> list[VirtualNode]:
    """Split `data` into one file per virtual node under `folder` (once: a later run with
    the same data and split reuses the files) and describe the virtual nodes."""
    spec = parse_split(split)
    stat = data.stat()
    key = json.dumps(
        [str(data.resolve()), stat.st_size, stat.st_mtime_ns, str(spec), seed, target, nodes]
    )
    out = folder / hashlib.sha256(key.encode()).hexdigest()[:16]
    done = out / SHARDS_DONE
    if done.exists():
        counts = json.loads(done.read_text(encoding="utf-8"))["n_samples"]
        paths = [Path(p) for p in json.loads(done.read_text(encoding="utf-8"))["paths"]]
    else:
        if out.exists():  # an interrupted split: start it again
            shutil.rmtree(out)
        result = split_file(data, nodes, spec, out, seed=seed, target=target)
        paths = list(result.paths)
        counts = [row.n_samples for row in result.nodes]
        done.write_text(
            json.dumps({"source": key, "paths": [str(p) for p in paths], "n_samples": counts}),
            encoding="utf-8",
        )
    data_type = paths[0].suffix.lstrip(".") if paths else ""
    width = len(str(nodes))
    return [
        VirtualNode(
            node_id=f"sim-{i + 1:0{width}d}",
            name=f"virtual-node-{i + 1:0{width}d}",
            shard=path.resolve(),
            dataset=DatasetSummary("shard", tuple(tags), int(n), (int(n),), data_type),
            target=target,
        )
        for i, (path, n) in enumerate(zip(paths, counts, strict=True))
    ]
