"""Training plans: pending first, highlighted source, diff with the last approved version, decide."""

from __future__ import annotations

import asyncio
import difflib

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from common.errors import PlanError
from node import actions
from node.console.web import actor, form_of, login_required, render, state, text_field
from node.plans import PlanRecord, PlanRegistry

__all__ = ["routes"]

#: Order of the plan list: what waits for the operator first.
_STATUS_ORDER = {"pending": 0, "approved": 1, "rejected": 2}
#: Context lines around each change in a diff (as `diff -u`).
DIFF_CONTEXT = 3


def highlighted(source: str) -> str:
    """The plan source as HTML with Pygments' classes and line numbers (styled in console.css)."""
    return str(highlight(source, PythonLexer(), HtmlFormatter(linenos="table", cssclass="source")))


def unified_diff(old: PlanRecord, new: PlanRecord) -> list[tuple[str, str]]:
    """``(kind, line)`` pairs of a unified diff from ``old`` to ``new``; kind is add/del/hunk/ctx."""
    lines = difflib.unified_diff(
        old.source.splitlines(),
        new.source.splitlines(),
        fromfile=f"{old.plan_id} (approved)",
        tofile=f"{new.plan_id} ({new.status})",
        n=DIFF_CONTEXT,
        lineterm="",
    )
    kinds = []
    for line in lines:
        if line.startswith(("---", "+++")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "ctx"
        kinds.append((kind, line))
    return kinds


@login_required
async def plans_page(request: Request) -> Response:
    records = await asyncio.to_thread(PlanRegistry(state(request).home.db_path).list)
    # Stable sort: within a status, the order of arrival is kept; newest decisions last.
    records.sort(key=lambda r: _STATUS_ORDER[r.status])
    return render(request, "plans.html", plans=records, notice=request.query_params.get("notice"))


async def _plan_page(
    request: Request, status_code: int = 200, error: str | None = None
) -> Response:
    registry = PlanRegistry(state(request).home.db_path)
    try:
        record = await asyncio.to_thread(registry.get, request.path_params["plan_id"])
    except PlanError as exc:
        return render(request, "error.html", status_code=404, message=str(exc))
    previous = await asyncio.to_thread(registry.last_approved, record)
    return render(
        request,
        "plan.html",
        status_code=status_code,
        plan=record,
        source_html=highlighted(record.source),
        previous=previous,
        diff=unified_diff(previous, record) if previous else None,
        error=error,
    )


@login_required
async def plan_page(request: Request) -> Response:
    return await _plan_page(request)


async def _decide(request: Request, approve: bool) -> Response:
    reason = text_field(form_of(request), "reason")
    if not approve and not reason:
        return await _plan_page(
            request,
            status_code=422,
            error="give a reason for the rejection: the researcher is told it with the refusal",
        )
    decide = actions.approve_plan if approve else actions.reject_plan
    try:
        record = await asyncio.to_thread(
            decide,
            state(request).home.db_path,
            actor(request),
            request.path_params["plan_id"],
            reason,
        )
    except PlanError as exc:
        return render(request, "error.html", status_code=404, message=str(exc))
    return RedirectResponse(
        f"/plans?notice=Plan+{record.plan_id}+({record.class_name})+is+now+{record.status}.",
        status_code=303,
    )


@login_required
async def approve_plan(request: Request) -> Response:
    return await _decide(request, approve=True)


@login_required
async def reject_plan(request: Request) -> Response:
    return await _decide(request, approve=False)


routes = [
    Route("/plans", plans_page, methods=["GET"]),
    Route("/plans/{plan_id}", plan_page, methods=["GET"]),
    Route("/plans/{plan_id}/approve", approve_plan, methods=["POST"]),
    Route("/plans/{plan_id}/reject", reject_plan, methods=["POST"]),
]
