"""`fedloom data split`: cut one CSV or NPZ dataset into N node datasets (see common/data_split.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common.data_split import heterogeneity, parse_split
from common.errors import FedloomError
from common.split_files import SplitResult, split_file

__all__ = ["format_split_table", "register", "split_to_dict"]

#: Classes shown as one column each; more would not fit a terminal (JSON always has them all).
MAX_CLASS_COLUMNS = 12


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `data` command and its `split` sub-command."""
    data = sub.add_parser("data", help="prepare datasets: split one dataset into node datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    split = dsub.add_parser(
        "split",
        help="split a CSV or NPZ dataset into N node datasets (IID, label skew, Dirichlet)",
        description="Split DATA into N node files, seeded and deterministic, and print each "
        "node's class counts. iid: stratified, balanced; label-skew:K: each node holds K "
        "classes; dirichlet:ALPHA: class proportions per node drawn from Dirichlet(ALPHA), "
        "smaller ALPHA means more skew.",
    )
    split.add_argument("data", type=Path, help="DATA.csv (with a header line) or DATA.npz")
    split.add_argument("--nodes", type=int, required=True, help="number of node datasets")
    split.add_argument(
        "--split",
        required=True,
        metavar="iid|label-skew:K|dirichlet:ALPHA",
        help="how samples are distributed (e.g. iid, label-skew:2, dirichlet:0.5)",
    )
    split.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    split.add_argument(
        "--target",
        default=None,
        help="the column (CSV) or array (NPZ) holding the class; needed by label-skew and "
        "dirichlet, makes iid stratified",
    )
    split.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for node-1.csv, node-2.csv... (default: DATA's folder / DATA's name-nodes)",
    )
    split.add_argument("--format", choices=("table", "json"), default="table", help="output")
    split.set_defaults(func=cmd_split)


def cmd_split(args: argparse.Namespace) -> int:
    """Parse, split, write, print; a bad request is a one-line error with exit code 2."""
    data: Path = args.data
    out: Path = args.out or data.parent / f"{data.stem}-nodes"
    try:
        spec = parse_split(args.split)
        result = split_file(data, args.nodes, spec, out, seed=args.seed, target=args.target)
    except FedloomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(split_to_dict(result), indent=2))
    else:
        print(format_split_table(result))
        print(
            "\nregister each file on its node, e.g.:\n"
            f"  fedloom node --home HOME dataset add --name NAME --tags '#TAG' "
            f"--path {result.paths[0]}" + (f" --target {result.target}" if result.target else "")
        )
    return 0


def split_to_dict(result: SplitResult) -> dict[str, Any]:
    """The JSON document `--format json` prints."""
    doc: dict[str, Any] = {
        "source": str(result.source),
        "split": str(result.spec),
        "seed": result.seed,
        "target": result.target,
        "nodes": [
            {
                "node": row.node + 1,
                "path": str(path),
                "samples": row.n_samples,
                "classes": dict(zip(result.classes, row.per_class, strict=True)),
            }
            for row, path in zip(result.nodes, result.paths, strict=True)
        ],
    }
    if result.classes:
        doc["heterogeneity"] = round(heterogeneity(result.nodes), 4)
    return doc


def format_split_table(result: SplitResult) -> str:
    """Plain aligned text, one row per node, one column per class; never truncated.

    Past `MAX_CLASS_COLUMNS` classes, a column counts each node's classes instead.
    """
    per_class = len(result.classes) <= MAX_CLASS_COLUMNS
    class_header = [f"class {c}" for c in result.classes] if per_class else ["classes"]

    def class_cells(counts: tuple[int, ...]) -> list[str]:
        if per_class:
            return [str(c) for c in counts]
        return [str(sum(1 for c in counts if c))]

    header = ["node", "file", "samples", *class_header]
    rows = [
        [str(row.node + 1), path.name, str(row.n_samples), *class_cells(row.per_class)]
        for row, path in zip(result.nodes, result.paths, strict=True)
    ]
    totals = tuple(sum(col) for col in zip(*(r.per_class for r in result.nodes), strict=True))
    rows.append(["all", "", str(sum(r.n_samples for r in result.nodes)), *class_cells(totals)])
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # Text columns left-aligned, counts right-aligned.
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    title = f"{result.source.name} -> {len(result.nodes)} nodes, {result.spec}, seed {result.seed}"
    lines = [title, "", line(header), *(line(r) for r in rows)]
    if result.classes:
        lines.append(
            f"\nheterogeneity {heterogeneity(result.nodes):.3f} "
            "(mean distance of each node's class mix from the pooled mix: 0 = IID)"
        )
    return "\n".join(lines)
