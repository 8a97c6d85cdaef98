"""`fedloom certs`: the sub-commands registered by fedloom.certs_cmd."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest

from common.tls import CertDirectory, read_node_id
from fedloom import certs_cmd


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fedloom")
    certs_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_init_then_add_node_issues_every_certificate(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    assert (
        _run(
            "certs",
            "init",
            "--out",
            str(out),
            "--researcher-host",
            "researcher",
            "--node",
            "node-1",
            "--node",
            "node-2",
        )
        == 0
    )
    assert _run("certs", "add-node", "--out", str(out), "--node", "node-3") == 0
    certs = CertDirectory(out)
    assert certs.node_ids() == ["node-1", "node-2", "node-3"]
    assert [read_node_id(certs.node(n).cert) for n in certs.node_ids()] == certs.node_ids()
    assert stat.S_IMODE(certs.node("node-3").key.stat().st_mode) == 0o600


def test_second_init_fails_without_force_and_keeps_the_ca(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    assert _run("certs", "init", "--out", str(out), "--node", "node-1") == 0
    ca = (out / "ca.pem").read_bytes()
    assert _run("certs", "init", "--out", str(out), "--node", "node-1") == 1
    assert (out / "ca.pem").read_bytes() == ca
    assert _run("certs", "init", "--out", str(out), "--node", "node-9", "--force") == 0
    assert (out / "ca.pem").read_bytes() != ca
    assert CertDirectory(out).node_ids() == ["node-9"]


def test_list_json_names_each_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    _run("certs", "init", "--out", str(out), "--node", "node-1")
    capsys.readouterr()
    assert _run("certs", "list", "--out", str(out), "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["role"] for r in rows] == ["ca", "researcher", "node"]
    assert rows[2]["node_id"] == "node-1"
    assert rows[1]["san"] == ["localhost", "127.0.0.1"]


def test_init_requires_out(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _run("certs", "init", "--node", "node-1")
    assert "--out" in capsys.readouterr().err
