"""Entry point of the `fedloom` command; each sub-command lives with the part it drives."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from common import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full command tree."""
    import node.cli
    import researcher.cli
    from fedloom import certs_cmd, data_cmd, demo, new_project

    parser = argparse.ArgumentParser(
        prog="fedloom",
        description="Federated learning: a researcher trains with nodes that keep their data.",
    )
    parser.add_argument("--version", action="version", version=f"fedloom {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    node.cli.register(sub)
    researcher.cli.register(sub)
    certs_cmd.register(sub)
    data_cmd.register(sub)
    demo.register(sub)
    new_project.register(sub)
    return parser


def setup_logging(verbose: bool) -> None:
    """Human-readable logs on stderr (rich when it is a terminal)."""
    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("grpc", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
