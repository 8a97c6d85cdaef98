"""Datasets: list with hash state, add (same checks as the CLI), verify, re-register, remove."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from common.errors import DatasetError, FedloomError
from node import actions
from node.console.web import actor, form_of, login_required, render, state, text_field
from node.datasets import DATA_TYPES
from node.registry import DatasetRegistry

__all__ = ["routes"]

#: Form fields of the add form; an error whose ``field`` is none of them shows at the path.
ADD_FIELDS = ("name", "tags", "path", "type", "target", "description")


async def _page(
    request: Request,
    *,
    status_code: int = 200,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    notice: str | None = None,
) -> Response:
    db_path = state(request).home.db_path
    records = await asyncio.to_thread(DatasetRegistry(db_path).list)
    # A dataset edited behind the node's back shows CHANGED at once (its files moved), as
    # it would be refused at the next task.
    checks = await asyncio.to_thread(state(request).hash_states.check_all, records)
    return render(
        request,
        "datasets.html",
        status_code=status_code,
        datasets=records,
        checks=checks,
        data_types=DATA_TYPES,
        values=values or {},
        errors=errors or {},
        notice=notice or request.query_params.get("notice"),
    )


@login_required
async def datasets_page(request: Request) -> Response:
    return await _page(request)


@login_required
async def add_dataset(request: Request) -> Response:
    form = form_of(request)
    values = {name: text_field(form, name) for name in ADD_FIELDS}
    try:
        record = await asyncio.to_thread(
            actions.add_dataset,
            state(request).home.db_path,
            actor(request),
            values["name"],
            values["tags"].split(","),
            values["path"],
            data_type=values["type"] or None,
            target=values["target"] or None,
            description=values["description"],
        )
    except DatasetError as exc:
        field = exc.field if exc.field in ADD_FIELDS else "path"
        return await _page(request, status_code=422, values=values, errors={field: str(exc)})
    return RedirectResponse(
        f"/datasets?notice=Registered+{record.name}:+{record.n_samples}+samples", status_code=303
    )


async def _dataset_action(request: Request, action: str) -> Response:
    name = request.path_params["name"]
    db_path = state(request).home.db_path
    try:
        if action == "remove":
            await asyncio.to_thread(actions.remove_dataset, db_path, actor(request), name)
            notice = f"Removed {name} from the registry (its files were left untouched)."
        elif action == "reregister":
            record = await asyncio.to_thread(
                actions.reregister_dataset, db_path, actor(request), name
            )
            notice = f"Registered {name} again with its current content ({record.sha256[:12]})."
        else:
            record = await asyncio.to_thread(DatasetRegistry(db_path).get, name)
            verdict = await asyncio.to_thread(state(request).hash_states.check, record, force=True)
            notice = f"{name}: unchanged." if verdict.ok else f"{name}: CHANGED."
    except FedloomError as exc:
        return await _page(request, status_code=422, notice=f"error: {exc}")
    return await _page(request, notice=notice)


@login_required
async def verify_dataset(request: Request) -> Response:
    return await _dataset_action(request, "verify")


@login_required
async def reregister_dataset(request: Request) -> Response:
    return await _dataset_action(request, "reregister")


@login_required
async def remove_dataset(request: Request) -> Response:
    return await _dataset_action(request, "remove")


routes = [
    Route("/datasets", datasets_page, methods=["GET"]),
    Route("/datasets", add_dataset, methods=["POST"]),
    Route("/datasets/{name}/verify", verify_dataset, methods=["POST"]),
    Route("/datasets/{name}/reregister", reregister_dataset, methods=["POST"]),
    Route("/datasets/{name}/remove", remove_dataset, methods=["POST"]),
]
