"""The audit trail: operator actions from the CLI and the console, exportable as CSV."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from node.audit import AuditTrail
from node.console.web import login_required, render, state

__all__ = ["routes"]

#: Entries on the page; the CSV export has them all.
PAGE_ENTRIES = 200


@login_required
async def audit_page(request: Request) -> Response:
    trail = AuditTrail(state(request).home.db_path)
    entries = await asyncio.to_thread(trail.list, PAGE_ENTRIES)
    return render(request, "audit.html", entries=entries)


@login_required
async def audit_csv(request: Request) -> Response:
    home = state(request).home
    text = await asyncio.to_thread(AuditTrail(home.db_path).to_csv)
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{home.node_id}-audit.csv"'},
    )


routes = [
    Route("/audit", audit_page, methods=["GET"]),
    Route("/audit.csv", audit_csv, methods=["GET"]),
]
