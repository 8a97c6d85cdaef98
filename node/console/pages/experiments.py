"""Experiments this node served: per-round samples, local losses and metrics, durations, errors.

The rounds table of an experiment updates live: an event stream re-sends it whenever a
task of the node starts or finishes (the daemon writes ``served_tasks``; we poll its
fingerprint, a single cheap query).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from node.console.web import TEMPLATES, login_required, render, state
from node.served import ServedTasks

__all__ = ["routes", "sse_event"]

#: Seconds between two looks at the served-tasks table for a live page: rounds take
#: seconds to minutes, so half a second feels immediate at a negligible cost.
POLL_SECONDS = 0.5


def sse_event(data: str, event: str = "message") -> str:
    """One server-sent event; every line of ``data`` gets its own ``data:`` field."""
    body = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {event}\n{body}\n"


@login_required
async def experiments_page(request: Request) -> Response:
    summaries = await asyncio.to_thread(ServedTasks(state(request).home.db_path).experiments)
    return render(request, "experiments.html", experiments=summaries)


def _rounds_html(request: Request, experiment_id: str) -> str:
    tasks = ServedTasks(state(request).home.db_path).list(experiment_id)
    template = TEMPLATES.get_template("_rounds.html")
    return template.render(tasks=tasks)


@login_required
async def experiment_page(request: Request) -> Response:
    experiment_id = request.path_params["experiment_id"]
    rounds_html = await asyncio.to_thread(_rounds_html, request, experiment_id)
    return render(request, "experiment.html", experiment_id=experiment_id, rounds_html=rounds_html)


@login_required
async def experiment_events(request: Request) -> Response:
    experiment_id = request.path_params["experiment_id"]
    served = ServedTasks(state(request).home.db_path)

    async def stream() -> AsyncIterator[str]:
        marker = ""
        while not await request.is_disconnected():
            fingerprint = await asyncio.to_thread(served.fingerprint)
            if fingerprint != marker:
                marker = fingerprint
                html = await asyncio.to_thread(_rounds_html, request, experiment_id)
                yield sse_event(html, "rounds")
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


routes = [
    Route("/experiments", experiments_page, methods=["GET"]),
    # Experiment ids come from researchers and may hold any character, "/" included; the
    # events route goes first so that ".../events" is never read as an id.
    Route("/experiments/{experiment_id:path}/events", experiment_events, methods=["GET"]),
    Route("/experiments/{experiment_id:path}", experiment_page, methods=["GET"]),
]
