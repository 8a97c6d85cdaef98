"""Entry point of the `fedloom` command; each sub-command lives with the part it drives."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from common import __version__

__all__ = ["build_parser", "main", "setup_logging"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: Exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The full command tree."""
    import node.cli
    import researcher.cli
    from fedloom import certs_cmd, completion, data_cmd, demo, new_project, simulate_cmd

    parser = argparse.ArgumentParser(
        prog="fedloom",
        description="Federated learning: a researcher trains with nodes that keep their data.",
    )
    parser.add_argument("--version", action="version", version=f"fedloom {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=None,
        help="lowest level of the log lines shown (default INFO; -v is DEBUG)",
    )
    parser.add_argument(
        "--log-file", type=Path, default=None, help="also append every log line to this file"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors on the terminal"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    node.cli.register(sub)
    researcher.cli.register(sub)
    certs_cmd.register(sub)
    data_cmd.register(sub)
    simulate_cmd.register(sub)
    demo.register(sub)
    new_project.register(sub)
    completion.register(sub)
    return parser


class CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record is emitted.

    A plain StreamHandler keeps the stream it was built with; when `main` runs in-process
    (tests, embedding scripts) that stream may be a capture buffer closed long before the
    root logger's next record, which then fails with "I/O operation on closed file".
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        """The stream is always the current `sys.stderr`; nothing to store."""


def setup_logging(
    verbose: bool = False,
    *,
    level: str | None = None,
    log_file: Path | None = None,
    quiet: bool = False,
) -> None:
    """Human-readable logs on stderr (rich when it is a terminal), and in `log_file` if given.

    `quiet` raises the terminal's threshold to WARNING only: the log file and the run folder's
    run.log still get every line at `level`.
    """
    threshold = logging.getLevelName(level) if level else logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = CurrentStderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
    handler.setLevel(max(threshold, logging.WARNING) if quiet else threshold)
    handlers = [handler]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(logging.Formatter(LOG_FORMAT))
        handlers.append(to_file)
    logging.basicConfig(level=threshold, handlers=handlers, force=True)
    for noisy in ("grpc", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, level=args.log_level, log_file=args.log_file, quiet=args.quiet)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handling: no traceback
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
