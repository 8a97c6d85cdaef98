"""Reading the daemon's log file (``logs/node.log``, format ``node.daemon.NODE_LOG_FORMAT``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LEVELS", "LogLine", "LogTail", "parse_lines", "read_lines"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: ``2026-01-31 12:00:00,123 INFO [exp-id] node.tasks: message``; the experiment tag is
#: absent from lines written before it existed.
_LINE = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<level>[A-Z]+) "
    r"(?:\[(?P<experiment>[^\]]*)\] )?(?P<logger>[\w.]+): (?P<message>.*)"
)

#: Bytes read from the end of the log for a page: about the last few thousand lines.
TAIL_BYTES = 256 * 1024


@dataclass(frozen=True)
class LogLine:
    """One log record (continuation lines of a traceback folded into ``message``)."""

    time: str
    level: str
    experiment: str
    logger: str
    message: str

    def matches(self, min_level: str | None, experiment: str | None) -> bool:
        """True when at or above ``min_level`` and (if given) about ``experiment``."""
        if min_level and LEVELS.index(self.level) < LEVELS.index(min_level):
            return False
        return not experiment or self.experiment == experiment

    def to_dict(self) -> dict[str, str]:
        return {
            "time": self.time,
            "level": self.level,
            "experiment": self.experiment,
            "logger": self.logger,
            "message": self.message,
        }


def parse_lines(lines: Iterable[str]) -> list[LogLine]:
    """Records from raw lines; a line that does not start a record continues the previous one."""
    records: list[LogLine] = []
    for raw in lines:
        line = raw.rstrip("\n")
        match = _LINE.fullmatch(line)
        if match and match["level"] in LEVELS:
            records.append(
                LogLine(
                    match["time"],
                    match["level"],
                    match["experiment"] or "-",
                    match["logger"],
                    match["message"],
                )
            )
        elif records and line:
            last = records[-1]
            records[-1] = LogLine(
                last.time, last.level, last.experiment, last.logger, f"{last.message}\n{line}"
            )
    return records


def read_lines(path: Path) -> list[LogLine]:
    """The last records of the log at ``path`` (none when the daemon never ran)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            data = fh.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace")
    if size > TAIL_BYTES:
        text = text.split("\n", 1)[-1]  # drop the partial first line
    return parse_lines(text.splitlines())


class LogTail:
    """Follows a growing log file from a byte offset (the end, initially)."""

    def __init__(self, path: Path, *, from_start: bool = False) -> None:
        self.path = path
        try:
            self._offset = 0 if from_start else path.stat().st_size
        except FileNotFoundError:
            self._offset = 0
        self._partial = ""

    def poll(self) -> list[LogLine]:
        """Records appended since the last call (a rotated or truncated file restarts)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self._offset:
            self._offset = 0
        if size == self._offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read(size - self._offset)
        self._offset = size
        text = self._partial + data.decode("utf-8", errors="replace")
        complete, _, self._partial = text.rpartition("\n")
        return parse_lines(complete.splitlines()) if complete else []
