"""examples/systemd/fedloom-node.service starts a real, secure `fedloom node start`."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from fedloom.cli import build_parser
from node.cli import cmd_start
from tests.conftest import ROOT

UNIT = ROOT / "examples" / "systemd" / "fedloom-node.service"


def _service_section() -> configparser.SectionProxy:
    # systemd's continuation lines end in a backslash; configparser does not know them.
    text = UNIT.read_text().replace("\\\n", " ")
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser["Service"]


def test_unit_exec_start_is_a_valid_node_start_command_with_tls() -> None:
    argv = shlex.split(_service_section()["ExecStart"])
    assert Path(argv[0]).name == "fedloom"
    args = build_parser().parse_args(argv[1:])
    assert args.func is cmd_start
    assert not args.insecure and not args.allow_unapproved
    assert args.ca and args.cert and args.key
    assert ":" in args.researcher


def test_unit_lets_the_node_write_only_to_its_home() -> None:
    service = _service_section()
    args = build_parser().parse_args(shlex.split(service["ExecStart"])[1:])
    writable = [Path(p) for p in service["ReadWritePaths"].split()]
    assert service["ProtectSystem"] == "strict"
    assert any(Path(args.home).is_relative_to(p) for p in writable)
    assert not any(Path(args.ca).is_relative_to(p) for p in writable)
