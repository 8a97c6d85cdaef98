"""Small things a user trips over: completion, log flags, tag rule, ports, `dataset update`, hints."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, fedloom_cmd, free_port, write_tabular_csv


def _fedloom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(fedloom_cmd(*args), capture_output=True, text=True, cwd=ROOT, timeout=120)


def _complete(script: str, *words: str) -> list[str]:
    """What bash offers after `words` (the last one being completed) with the script loaded."""
    line = " ".join(f"'{w}'" for w in words)
    program = f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _fedloom; echo "${{COMPREPLY[@]}}"'
    proc = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return proc.stdout.split()


def test_bash_completion_offers_sub_commands_and_options_of_each_level() -> None:
    proc = _fedloom("completion", "bash")
    assert proc.returncode == 0
    script = proc.stdout
    assert _complete(script, "fedloom", "res") == ["researcher"]
    assert _complete(script, "fedloom", "node", "--home", "h", "dataset", "up") == ["update"]
    assert set(_complete(script, "fedloom", "researcher", "")) >= {"run", "ls", "logs", "stop"}
    assert "--format" in _complete(script, "fedloom", "researcher", "run", "--f")
    assert "--follow" in _complete(script, "fedloom", "researcher", "logs", "--fo")


def test_zsh_completion_loads_the_same_words_through_bashcompinit() -> None:
    proc = _fedloom("completion", "zsh")
    assert proc.returncode == 0
    assert proc.stdout.startswith("# fedloom shell completion (zsh)")
    assert (
        "bashcompinit" in proc.stdout and "complete -o default -F _fedloom fedloom" in proc.stdout
    )


def test_quiet_keeps_info_off_the_terminal_but_in_the_log_file(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "fedloom.log"
    proc = _fedloom(
        "--quiet", "--log-file", str(log_file), "researcher", "datasets", "--wait", "0",
        "--insecure", "--address", f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "WITHOUT TLS" in proc.stderr  # warnings still show
    assert "listening on" not in proc.stderr
    logged = log_file.read_text()
    assert "listening on" in logged and "WITHOUT TLS" in logged


def test_log_level_filters_the_terminal(tmp_path: Path) -> None:
    proc = _fedloom(
        "--log-level", "error", "researcher", "datasets", "--wait", "0", "--insecure",
        "--address", f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    assert proc.returncode == 0
    assert "WITHOUT TLS" not in proc.stderr and "listening on" not in proc.stderr


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "my node"
    proc = _fedloom("node", "--home", str(home), "init", "--name", "north")
    assert proc.returncode == 0, proc.stderr
    assert f"`fedloom node --home '{home}' dataset add" in proc.stdout.replace("\n", "")
    assert f"then `fedloom node --home '{home}' start`" in proc.stdout.replace("\n", "")
    return home


def _csv(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    return write_tabular_csv(path, rng.normal(size=(rows, 2)), rng.integers(0, 2, rows))


def test_tags_must_start_with_a_hash(home: Path, tmp_path: Path) -> None:
    data = _csv(tmp_path / "a.csv", 10)
    proc = _fedloom("node", "--home", str(home), "dataset", "add", "--name", "a",
                    "--tags", "#ok,heart", "--path", str(data))  # fmt: skip
    assert proc.returncode == 2
    assert "tag 'heart' must start with '#'" in proc.stderr and "'#heart'" in proc.stderr
    asked = _fedloom("researcher", "datasets", "--tags", "heart", "--wait", "0", "--insecure",
                     "--address", f"127.0.0.1:{free_port()}")  # fmt: skip
    assert asked.returncode == 2 and "must start with '#'" in asked.stderr


def test_a_changed_dataset_is_updated_in_place_and_verifies_again(
    home: Path, tmp_path: Path
) -> None:
    node = ("node", "--home", str(home))
    data = _csv(tmp_path / "a.csv", 10)
    assert _fedloom(*node, "dataset", "add", "--name", "a", "--tags", "#t", "--path", str(data),
                    "--target", "y").returncode == 0  # fmt: skip
    duplicate = _fedloom(*node, "dataset", "add", "--name", "a", "--tags", "#t",
                         "--path", str(data))  # fmt: skip
    assert duplicate.returncode == 2
    assert f"fedloom node --home '{home}' dataset remove a" in duplicate.stderr

    _csv(data, 25)  # the data grew
    changed = _fedloom(*node, "dataset", "verify")
    assert changed.returncode == 1 and "CHANGED" in changed.stdout
    assert f"fedloom node --home '{home}' dataset update NAME" in changed.stdout.replace("\n", "")

    updated = _fedloom(*node, "dataset", "update", "a", "--json")
    assert updated.returncode == 0, updated.stderr
    assert '"n_samples": 25' in updated.stdout and '"target": "y"' in updated.stdout
    assert '"tags": [\n    "#t"\n  ]' in updated.stdout  # kept
    assert _fedloom(*node, "dataset", "verify").returncode == 0

    data.write_text("not,a\n")  # no target column any more: refused, the entry stays
    assert _fedloom(*node, "dataset", "update", "a").returncode == 2
    assert '"n_samples": 25' in _fedloom(*node, "dataset", "show", "a", "--json").stdout


def test_researcher_address_without_a_port_is_refused(home: Path) -> None:
    proc = _fedloom("node", "--home", str(home), "start", "--researcher", "example.org",
                    "--insecure")  # fmt: skip
    assert proc.returncode == 2
    assert "needs a port: expected HOST:PORT" in proc.stderr and "example.org:50051" in proc.stderr
