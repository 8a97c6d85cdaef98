"""The node log, filterable by level and experiment, streamed live as server-sent events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from node.console.logs import LEVELS, LogTail, read_lines
from node.console.pages.experiments import POLL_SECONDS, sse_event
from node.console.web import login_required, render, state

__all__ = ["routes"]

#: Records shown when the page opens; older ones are in the file.
INITIAL_LINES = 500


def _filters(request: Request) -> tuple[str | None, str | None]:
    level = request.query_params.get("level") or None
    experiment = request.query_params.get("experiment") or None
    return (level if level in LEVELS else None), experiment


@login_required
async def logs_page(request: Request) -> Response:
    level, experiment = _filters(request)
    log_path = state(request).home.logs_dir / "node.log"
    records = await asyncio.to_thread(read_lines, log_path)
    experiments = sorted({r.experiment for r in records if r.experiment != "-"})
    shown = [r for r in records if r.matches(level, experiment)][-INITIAL_LINES:]
    return render(
        request,
        "logs.html",
        lines=shown,
        levels=LEVELS,
        level=level or "",
        experiment=experiment or "",
        experiments=experiments,
    )


@login_required
async def log_events(request: Request) -> Response:
    level, experiment = _filters(request)
    tail = LogTail(state(request).home.logs_dir / "node.log")

    async def stream() -> AsyncIterator[str]:
        yield sse_event("", "ready")
        while not await request.is_disconnected():
            for record in await asyncio.to_thread(tail.poll):
                if record.matches(level, experiment):
                    yield sse_event(json.dumps(record.to_dict()), "line")
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


routes = [
    Route("/logs", logs_page, methods=["GET"]),
    Route("/logs/events", log_events, methods=["GET"]),
]
