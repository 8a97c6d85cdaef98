"""Console pages over HTTP: dataset form messages, CHANGED datasets, escaping, audit export."""

from __future__ import annotations

import html
import os

import numpy as np
import pytest

from node.audit import AuditTrail
from node.home import NodeHome
from node.registry import DatasetRegistry
from node.served import ServedTasks
from tests.conftest import run_fedloom, write_tabular_csv
from tests.console_client import console_client


@pytest.fixture
def home(tmp_path) -> NodeHome:
    home = NodeHome(tmp_path / "home").init(name="clinic")
    write_tabular_csv(tmp_path / "a.csv", np.zeros((4, 2)), np.zeros(4))
    DatasetRegistry(home.db_path).add("a", ["#a"], tmp_path / "a.csv", target="y")
    return home


def _cli_error(home: NodeHome, *args: str) -> str:
    done = run_fedloom("node", "--home", str(home.path), "dataset", "add", *args)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    return errors[0].removeprefix("error: ")


@pytest.mark.parametrize(
    ("field", "form"),
    [
        ("name", {"name": "no spaces!", "tags": "#b", "target": "y"}),
        ("name", {"name": "a", "tags": "#b", "target": "y"}),  # taken
        ("tags", {"name": "b", "tags": " , ", "target": "y"}),
        ("target", {"name": "b", "tags": "#b", "target": "outcome"}),
        ("type", {"name": "b", "tags": "#b", "type": "npy", "target": "y"}),
    ],
)
def test_the_add_form_shows_the_clis_message_at_the_field_it_concerns(
    home, tmp_path, start_console, field, form
):
    console = start_console(home.path)
    client = console_client(console.url)
    client.login(console.password)
    form = {"path": str(tmp_path / "a.csv"), **form}
    expected = _cli_error(
        home,
        *[arg for key, value in form.items() for arg in (f"--{key}", value)],
    )
    status, _, page = client.request("/datasets", {**form, "csrf_token": client.csrf("/datasets")})
    assert status == 422
    shown = html.unescape(page.split(f'id="error-{field}">', 1)[1].split("</p>", 1)[0])
    assert shown == expected
    assert [d.name for d in DatasetRegistry(home.db_path).list()] == ["a"]


def test_a_changed_dataset_shows_changed_until_registered_again(home, tmp_path, start_console):
    console = start_console(home.path)
    client = console_client(console.url)
    client.login(console.password)
    write_tabular_csv(tmp_path / "a.csv", np.ones((6, 2)), np.ones(6))
    _, _, page = client.request("/datasets")
    assert "CHANGED" in page and 'class="changed"' in page
    status, _, page = client.request(
        "/datasets/a/reregister", {"csrf_token": client.csrf("/datasets")}
    )
    assert status == 200 and "CHANGED" not in page
    assert DatasetRegistry(home.db_path).get("a").n_samples == 6
    entry = AuditTrail(home.db_path).list()[0]
    assert (entry.source, entry.action, entry.subject) == ("console", "dataset.reregister", "a")


def test_text_from_a_researcher_is_escaped_in_pages(home, start_console):
    hostile = "<script>alert(1)</script>"
    served = ServedTasks(home.db_path)
    served.started("t1", hostile, 1, "train", "researcher-1")
    served.finished("t1", seconds=0.1, ok=False, error_kind="PlanError", error_message=hostile)
    console = start_console(home.path)
    client = console_client(console.url)
    client.login(console.password)
    for path in ("/experiments", "/", "/experiments/%3Cscript%3Ealert(1)%3C%2Fscript%3E"):
        status, headers, page = client.request(path)
        assert status == 200, path
        assert hostile not in page and "&lt;script&gt;" in page, path
        # And were escaping ever missed, the policy forbids inline scripts.
        assert "default-src 'self'" in headers["content-security-policy"]


def test_the_audit_export_keeps_typed_text_out_of_spreadsheet_formulas(tmp_path):
    home = NodeHome(tmp_path / "home").init()
    trail = AuditTrail(home.db_path)
    trail.record("console", "operator@127.0.0.1", "plan.reject", "abc123", '=HYPERLINK("x")')
    text = trail.to_csv()
    assert text.splitlines()[0] == "id,at,source,actor,action,subject,detail"
    assert "'=HYPERLINK" in text


def test_the_list_rehashes_only_moved_files_and_verify_always_rehashes(
    home, tmp_path, start_console
):
    console = start_console(home.path)
    client = console_client(console.url)
    client.login(console.password)
    path = tmp_path / "a.csv"
    assert "CHANGED" not in client.request("/datasets")[2]
    before = path.stat()
    data = path.read_bytes()
    path.write_bytes(data.replace(b"0", b"1", 1))  # same size, other content
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert "CHANGED" not in client.request("/datasets")[2]  # nothing moved: cached state
    status, _, page = client.request("/datasets/a/verify", {"csrf_token": client.csrf("/datasets")})
    assert status == 200 and "a: CHANGED." in page
    assert "CHANGED" in client.request("/datasets")[2]  # and the list now knows it
