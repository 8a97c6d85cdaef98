"""Who may use the node console: no session, a wrong CSRF token, a network bind without TLS.

Each test talks HTTP to a real `fedloom node console` process, as an attacker would.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from common.plan_hash import plan_hash
from node.audit import AuditTrail
from node.home import NodeHome
from node.plans import PlanRegistry
from node.registry import DatasetRegistry
from tests.conftest import ROOT, free_port, run_fedloom, write_tabular_csv
from tests.console_client import console_client

PLAN = "class HeartPlan:\n    pass\n"


@pytest.fixture
def home(tmp_path: Path) -> NodeHome:
    """A node home with one dataset and one pending plan."""
    home = NodeHome(tmp_path / "home").init(name="clinic")
    x = np.zeros((4, 2))
    write_tabular_csv(tmp_path / "a.csv", x, np.zeros(4))
    DatasetRegistry(home.db_path).add("a", ["#a"], tmp_path / "a.csv", target="y")
    PlanRegistry(home.db_path).record_request(plan_hash(PLAN), "HeartPlan", PLAN, "researcher-1")
    return home


def _plan_status(home: NodeHome) -> str:
    return PlanRegistry(home.db_path).list()[0].status


def test_without_a_session_pages_redirect_to_login_and_actions_are_refused(home, start_console):
    console = start_console(home.path)
    plan_id = plan_hash(PLAN)[:12]
    anonymous = console_client(console.url)

    status, headers, _ = anonymous.request("/plans")
    assert status == 303 and headers["location"] == "/login"
    for path in ("/audit.csv", "/logs/events", "/experiments/x/events"):
        status, _, body = anonymous.request(path, accept="*/*")
        assert status == 403, path
        assert "not logged in" in body
    for path, form in (
        (f"/plans/{plan_id}/approve", {"reason": "x"}),
        ("/datasets/a/remove", {}),
        ("/datasets", {"name": "b", "tags": "#b", "path": "/etc/hostname"}),
    ):
        status, _, _ = anonymous.request(path, form)
        assert status == 403, path
    # Even with a valid anonymous session and its CSRF token, nothing changes.
    token = anonymous.csrf("/login")
    status, _, _ = anonymous.request(f"/plans/{plan_id}/approve", {"csrf_token": token})
    assert status == 403
    assert _plan_status(home) == "pending"
    assert [d.name for d in DatasetRegistry(home.db_path).list()] == ["a"]
    assert AuditTrail(home.db_path).list() == []


def test_a_wrong_or_missing_csrf_token_is_refused_and_changes_nothing(home, start_console):
    console = start_console(home.path)
    plan_id = plan_hash(PLAN)[:12]
    operator = console_client(console.url)
    operator.login(console.password)
    token = operator.csrf("/plans")

    for form in ({"reason": "ok"}, {"reason": "ok", "csrf_token": token[:-2] + "xx"}):
        status, _, body = operator.request(f"/plans/{plan_id}/approve", form)
        assert status == 403 and "CSRF" in body
    # A token from another session (the attacker's own) is no better.
    attacker = console_client(console.url)
    attacker.login(console.password)
    status, _, _ = operator.request(
        "/datasets/a/remove", {"csrf_token": attacker.csrf("/datasets")}
    )
    assert status == 403
    assert _plan_status(home) == "pending"
    assert [d.name for d in DatasetRegistry(home.db_path).list()] == ["a"]

    status, _, _ = operator.request(f"/plans/{plan_id}/approve", {"csrf_token": token})
    assert status == 303
    assert _plan_status(home) == "approved"
    entry = AuditTrail(home.db_path).list()[0]
    assert (entry.source, entry.action, entry.subject) == ("console", "plan.approve", plan_id)
    assert entry.actor == "operator@127.0.0.1"


def test_session_cookie_is_httponly_and_samesite_strict_and_login_rotates_it(home, start_console):
    console = start_console(home.path)
    client = console_client(console.url)
    status, headers, _ = client.request("/login")
    assert status == 200
    cookie = headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    before = {c.value for c in client.jar}
    client.login(console.password)
    after = {c.value for c in client.jar}
    assert before and after and not before & after  # no session fixation


def test_a_wrong_password_is_refused_and_a_reset_ends_open_sessions(home, start_console):
    console = start_console(home.path)
    client = console_client(console.url)
    token = client.csrf("/login")
    status, _, page = client.request("/login", {"csrf_token": token, "password": "guess"})
    assert status == 401 and "wrong password" in page
    assert client.request("/")[0] == 303

    client.login(console.password)
    assert client.request("/")[0] == 200
    reset = run_fedloom("node", "--home", str(home.path), "console", "--reset-password")
    assert reset.returncode == 0, reset.stderr
    new_secret = reset.stdout.split("password: ", 1)[1].split()[0]
    assert new_secret != console.password
    assert client.request("/")[0] == 303  # logged out by the reset
    fresh = console_client(console.url)
    fresh.login(new_secret)
    assert fresh.request("/")[0] == 200


def test_the_console_refuses_to_listen_on_a_network_address_without_tls(home):
    port = free_port()
    result = run_fedloom(
        "node", "--home", str(home.path), "console", "--host", "0.0.0.0", "--port", str(port)
    )
    assert result.returncode == 2
    assert "refuses to listen on 0.0.0.0 without TLS" in result.stderr
    assert "--cert and --key" in result.stderr


def test_on_a_network_address_with_tls_the_console_serves_https_with_secure_cookies(
    home, tmp_path, start_console
):
    from common.tls import init_certs

    certs = init_certs(tmp_path / "pki", ["127.0.0.1", "localhost"], ["node-1"])
    console = start_console(
        home.path,
        "--host",
        "0.0.0.0",
        "--cert",
        str(certs.server_cert),
        "--key",
        str(certs.server_key),
    )
    assert console.url.startswith("https://")
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    client = console_client(console.url.replace("0.0.0.0", "127.0.0.1"), context)
    status, headers, _ = client.request("/login")
    assert status == 200
    assert "secure" in headers["set-cookie"].lower()
    client.login(console.password)
    assert client.request("/")[0] == 200
    plain = console_client(console.url.replace("https://0.0.0.0", "http://127.0.0.1"))
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        plain.opener.open(plain.base + "/login", timeout=10)


def test_without_the_console_extra_the_command_names_the_install(home):
    # A finder that hides starlette, as on an installation without the `console` extra.
    script = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'starlette':\n"
        "            raise ModuleNotFoundError(name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from node.cli import main\n"
        f"sys.exit(main(['node', '--home', {str(home.path)!r}, 'console']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "pip install 'fedloom[console]'" in done.stderr
    assert "starlette" in done.stderr
