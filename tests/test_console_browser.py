"""The node console driven in headless Chromium against a real researcher and node.

A researcher runs in this process; the node is a `fedloom node start` process and the
console a `fedloom node console` process on the same home. Screenshots go to
test-artifacts/ for a reviewer.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from common.errors import RoundFailedError
from common.training_plans.source import plan_hash, plan_source
from researcher.federated_workflows import Experiment
from tests.conftest import (
    ARTIFACTS,
    NODE_CONNECT_TIMEOUT,
    run_fedloom,
    wait_for_nodes,
    write_tabular_csv,
)
from tests.plans import reviewed
from tests.plans.faulty import AdamLogisticPlan
from tests.plans.tabular import LogisticPlan, make_logistic_data

pytestmark = [pytest.mark.slow, pytest.mark.browser]

TAGS = ["#tab"]
TRAINING_ARGS = {"num_updates": 3, "batch_size": 1000, "random_seed": 0}
#: Milliseconds Playwright waits for an element: rounds take a few seconds on a loaded box.
WAIT_MS = 60_000
#: Rounds of the experiment whose progress the test watches live.
LIVE_ROUNDS = 3


def _plan_id(plan: type) -> str:
    return plan_hash(plan_source(plan))[:12]


def _experiment(plan: type, rounds: int = 1) -> Experiment:
    return Experiment(
        tags=TAGS, training_plan_class=plan, training_args=TRAINING_ARGS, round_limit=rounds
    )


def _refused(exp: Experiment) -> str:
    with pytest.raises(RoundFailedError) as info:
        exp.run()
    return str(info.value)


def _shot(page: Any, name: str) -> Path:
    path = ARTIFACTS / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _login(page: Any, url: str, password: str) -> None:
    page.goto(url + "/")
    assert page.url.endswith("/login")
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/")


def test_operator_reviews_and_decides_plans_of_a_real_run_in_the_browser(
    tmp_path, start_node, start_console, browser
):
    x, y = make_logistic_data(seed=0, n=80)
    node = start_node(
        "clinic", datasets=[("tab", TAGS, write_tabular_csv(tmp_path / "a.csv", x, y), "y")]
    )
    wait_for_nodes(1)
    console = start_console(node.home)
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    # -- log in; the status page shows the live connection ------------------------------
    _login(page, console.url, console.password)
    page.wait_for_selector("#connection >> text=connected to")
    _shot(page, "status")

    # -- add a dataset: a bad path is refused at its field, a good one is listed ----------
    page.goto(console.url + "/datasets")
    page.fill("#f-name", "extra")
    page.fill("#f-tags", "#extra")
    page.fill("#f-path", str(tmp_path / "nowhere.csv"))
    page.click("#add-dataset button[type=submit]")
    error = page.text_content("#error-path")
    assert "does not exist" in error and "nowhere.csv" in error
    assert page.get_attribute("#f-path", "aria-invalid") == "true"
    _shot(page, "dataset-bad-path")
    good = write_tabular_csv(tmp_path / "extra.csv", x[:40], y[:40])
    page.fill("#f-path", str(good))
    page.fill("#f-target", "y")
    page.click("#add-dataset button[type=submit]")
    page.wait_for_selector("tr[data-dataset=extra]")
    assert "40" in page.text_content("tr[data-dataset=extra]")

    # -- a real researcher's first plan, approved from the CLI ---------------------------
    assert "PlanNotApproved" in _refused(_experiment(LogisticPlan))
    approved = run_fedloom(
        "node",
        "--home",
        str(node.home),
        "plan",
        "approve",
        _plan_id(LogisticPlan),
        timeout=NODE_CONNECT_TIMEOUT,
    )
    assert approved.returncode == 0, approved.stderr

    # -- its second version: pending first, its diff, then approved in the console -------
    live = _experiment(reviewed.LogisticPlan, rounds=LIVE_ROUNDS)
    assert "PlanNotApproved" in _refused(live)
    new_id = _plan_id(reviewed.LogisticPlan)
    page.goto(console.url + "/plans")
    first_row = page.locator("#plans tbody tr").first
    assert first_row.get_attribute("data-plan") == new_id
    assert "pending" in first_row.text_content()
    page.click(f"a[href='/plans/{new_id}']")
    diff = page.text_content("#diff")
    assert "-        return Optimizer(lr=0.5)" in diff
    assert "+        return Optimizer(lr=0.2)" in diff
    assert _plan_id(LogisticPlan) in page.text_content("h2 + p")
    _shot(page, "plan-review")

    # Watch the experiment's page in a second tab before the rounds run.
    watcher = browser.new_page(viewport={"width": 1280, "height": 700})
    _login(watcher, console.url, console.password)
    watcher.goto(f"{console.url}/experiments/{live.id}")
    watcher.wait_for_selector("#live >> text=live")
    assert watcher.locator("tr.round.state-ok").count() == 0

    page.fill("#reason", "reviewed the learning-rate change")
    page.click("button.approve")
    page.wait_for_selector(f"tr[data-plan='{new_id}'] >> text=approved")

    runner = threading.Thread(target=live.run, daemon=True)
    runner.start()
    for round_number in range(1, LIVE_ROUNDS + 1):
        watcher.wait_for_selector(
            f"tr.round.state-ok[data-round='{round_number}']", timeout=WAIT_MS
        )
    runner.join(timeout=WAIT_MS / 1000)
    assert not runner.is_alive()
    rounds = watcher.locator("tr.round.state-ok")
    assert rounds.count() == LIVE_ROUNDS
    assert "80" in rounds.first.text_content()  # samples used by the node in a round
    _shot(watcher, "experiment-live")

    # -- a third plan, rejected with a reason the researcher's run receives --------------
    bad = _experiment(AdamLogisticPlan)
    assert "PlanNotApproved" in _refused(bad)
    bad_id = _plan_id(AdamLogisticPlan)
    page.goto(f"{console.url}/plans/{bad_id}")
    assert page.is_visible("#no-previous")
    page.click("button.danger")  # no reason: refused, nothing decided
    assert "give a reason" in page.text_content("#decide-error")
    page.fill("#reason", "Adam is not allowed on this data")
    page.click("button.danger")
    page.wait_for_selector(f"tr[data-plan='{bad_id}'] >> text=rejected")
    watcher.goto(console.url + "/logs?level=ERROR")
    watcher.wait_for_selector("#live >> text=live")
    refusal = _refused(bad)
    assert "PlanRejected" in refusal and "Adam is not allowed on this data" in refusal

    # The refusal reaches the log page live, as the researcher gets it.
    watcher.wait_for_selector("#log tbody tr.level-ERROR >> text=was rejected", timeout=WAIT_MS)
    assert "Adam is not allowed on this data" in watcher.text_content("#log tbody tr:last-child")

    # -- the log and the audit trail tell the same story ---------------------------------
    page.goto(f"{console.url}/logs?experiment={live.id}")
    assert page.locator("#log tbody tr").count() > 0
    assert all(
        text == live.id
        for text in page.locator("#log tbody tr td:nth-child(3)").all_text_contents()
    )
    _shot(page, "logs")
    page.goto(console.url + "/audit")
    _shot(page, "audit")
    with page.expect_download() as download:
        page.click("#export")
    csv_text = Path(download.value.path()).read_text()
    actions = [(row["source"], row["action"]) for row in csv.DictReader(io.StringIO(csv_text))]
    assert ("cli", "plan.approve") in actions
    assert ("console", "plan.approve") in actions
    assert ("console", "plan.reject") in actions
    assert ("console", "dataset.add") in actions
    plans = json.loads(
        run_fedloom(
            "node", "--home", str(node.home), "plan", "list", "--json", timeout=NODE_CONNECT_TIMEOUT
        ).stdout
    )
    assert {p["id"]: p["status"] for p in plans}[bad_id] == "rejected"
