"""Shared fixtures: a researcher server in the test process and real node processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from common.tls import CertDirectory, NodeCertPaths

ROOT = Path(__file__).resolve().parent.parent

#: Seconds a test waits for node processes to connect. A node says hello once its task
#: process has imported torch, declearn and torch._dynamo (about 6 s of CPU): on a loaded
#: 2-core box that took up to a minute.
NODE_CONNECT_TIMEOUT = 120.0

#: Node ids the `tls_researcher` fixture issues client certificates for.
TLS_NODE_IDS = ("node-1", "node-2", "node-3")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fedloom_cmd(*args: str) -> list[str]:
    """The fedloom command line, run with this interpreter."""
    return [sys.executable, "-m", "fedloom.cli", *args]


def run_fedloom(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `fedloom ARGS...` in a child process, as a user would; output captured as text."""
    return subprocess.run(
        fedloom_cmd(*args), capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False
    )


def write_tabular_csv(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """A CSV with columns x0..xN and target y (float targets kept as floats)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ",".join([f"x{i}" for i in range(x.shape[1])] + ["y"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.8g")
    return path


@dataclass
class NodeProcess:
    """A node started with `fedloom node start`, its home and its log file."""

    name: str
    home: Path
    node_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = NODE_CONNECT_TIMEOUT) -> bool:
        """Poll the node's log until it contains `text` (True) or `timeout` s pass (False)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        stop_process_group(self.proc)


def plan_task(
    scratch: Path,
    class_name: str,
    dataset_path: Path,
    training_args: dict[str, Any],
    state_dir: Path,
    round_number: int = 1,
    **fields: Any,
) -> Any:
    """A WorkerTask for `node.worker.run_task`, as the node's daemon (or the simulation)
    writes it: plan at `scratch/plan.py`, global model at `scratch/global.bin`."""
    import json

    from common.proto import fedloom_pb2 as pb

    return pb.WorkerTask(
        task_id=f"t{round_number}",
        experiment_id="exp",
        round=round_number,
        class_name=class_name,
        plan_path=str(scratch / "plan.py"),
        dataset_path=str(dataset_path),
        training_args_json=json.dumps(training_args),
        model_args_json="{}",
        global_payload_path=str(scratch / "global.bin"),
        scratch_dir=str(scratch),
        state_dir=str(state_dir),
        reply_payload_path=str(scratch / "reply.bin"),
        result_path=str(scratch / "result.pb"),
        **fields,
    )


def stop_process_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a process started with `start_new_session=True` and its group; SIGKILL after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture
def researcher_address(tmp_path: Path) -> Iterator[str]:
    """Run options of an in-process researcher on a free loopback port (plain text), made
    the process default so every Experiment and `get_server()` of the test uses them."""
    from researcher.run_options import RunOptions, use_run_options
    from researcher.server import shutdown_server

    address = f"127.0.0.1:{free_port()}"
    with use_run_options(RunOptions(address=address, out_dir=tmp_path / "runs", insecure=True)):
        yield address
    shutdown_server()


@dataclass(frozen=True)
class TlsResearcher:
    """Address of the in-process researcher serving mutual TLS, and its certificates."""

    address: str
    certs: CertDirectory


@pytest.fixture
def tls_researcher(researcher_address: str, tmp_path: Path) -> Iterator[TlsResearcher]:
    """`researcher_address` switched to mutual TLS, with certificates for TLS_NODE_IDS.

    The server reads its settings when first used: write `certs.root / "allowed_nodes.txt"`
    before that to restrict the nodes it accepts.
    """
    from common.tls import init_certs
    from researcher.run_options import RunOptions, use_run_options

    certs = init_certs(tmp_path / "pki", ["127.0.0.1", "localhost"], TLS_NODE_IDS)
    options = RunOptions(
        address=researcher_address, out_dir=tmp_path / "runs", cert_dir=certs.root, insecure=False
    )
    with use_run_options(options):
        yield TlsResearcher(researcher_address, certs)


def tls_args(paths: NodeCertPaths) -> list[str]:
    """`node start` flags presenting and trusting the given certificate files."""
    return ["--ca", str(paths.ca), "--cert", str(paths.cert), "--key", str(paths.key)]


NodeFactory = Callable[..., NodeProcess]


@pytest.fixture
def start_node(tmp_path: Path, researcher_address: str) -> Iterator[NodeFactory]:
    """Create a node home, register datasets, approve plans, start `fedloom node start`."""
    from common.training_plans.source import plan_source
    from node.home import NodeHome
    from node.provision import DatasetSpec, ReviewedPlan, provision_node

    nodes: list[NodeProcess] = []

    def start(
        name: str,
        datasets: Sequence[tuple[str, Sequence[str], Path, str | None]] = (),
        approve: Sequence[type] = (),
        extra_args: Sequence[str] = (),
        home: Path | None = None,
        address: str | None = None,
        node_id: str | None = None,
        insecure: bool = True,
    ) -> NodeProcess:
        """`insecure=False` leaves TLS to `extra_args` (see `tls_args`); `node_id` names a new home."""
        home = home or tmp_path / "nodes" / name
        if not (home / "config.toml").exists():
            provision_node(
                home,
                name=name,
                node_id=node_id,
                datasets=[
                    DatasetSpec(n, tags, path, None, target) for n, tags, path, target in datasets
                ],
                approved_plans=[ReviewedPlan(p.__name__, plan_source(p), "test") for p in approve],
            )
        node_home = NodeHome.open(home)
        log_path = home / "stdout.log"
        args = [
            "node",
            "--home",
            str(home),
            "start",
            "--researcher",
            address or researcher_address,
            *(["--insecure"] if insecure else []),
            *extra_args,
        ]
        proc = subprocess.Popen(
            fedloom_cmd(*args),
            stdout=open(log_path, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
        node = NodeProcess(name, home, node_home.node_id, proc, log_path, args)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def wait_for_nodes(count: int, timeout: float = NODE_CONNECT_TIMEOUT) -> None:
    """Block until `count` nodes are connected to the in-process researcher server."""
    from researcher.server import get_server

    server = get_server()
    if not server.directory.wait_until(lambda: len(server.directory.connected()) >= count, timeout):
        raise AssertionError(
            f"only {len(server.directory.connected())} of {count} nodes connected in {timeout} s"
        )


def wait_for_reconnect(node_id: str, old: object, timeout: float = NODE_CONNECT_TIMEOUT) -> None:
    """Block until node `node_id` is connected again on a new link (`old`: its link before)."""
    from researcher.server import get_server

    directory = get_server().directory
    if not directory.wait_until(
        lambda: (n := directory.get(node_id)) is not None and n is not old and n.alive, timeout
    ):
        raise AssertionError(f"node {node_id} did not reconnect in {timeout} s")


@dataclass
class ConsoleProcess:
    """A `fedloom node console` process: its URL, login secret and output."""

    home: Path
    url: str
    password: str
    proc: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def stop(self) -> None:
        stop_process_group(self.proc)


ConsoleFactory = Callable[..., ConsoleProcess]

#: Seconds a console may take to print its address (imports on a loaded 2-core box).
CONSOLE_START_TIMEOUT = 60.0


@pytest.fixture
def start_console() -> Iterator[ConsoleFactory]:
    """Start `fedloom node --home HOME console` on a free port; returns its URL and secret.

    The home must not have a console secret yet, so that the first start prints it.
    """
    consoles: list[ConsoleProcess] = []

    def start(home: Path, *extra_args: str) -> ConsoleProcess:
        port = free_port()
        proc = subprocess.Popen(
            fedloom_cmd("node", "--home", str(home), "console", "--port", str(port), *extra_args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            cwd=ROOT,
        )
        console = ConsoleProcess(home, "", "", proc)
        consoles.append(console)
        deadline = time.monotonic() + CONSOLE_START_TIMEOUT
        assert proc.stdout is not None
        while not console.url:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError("the console exited early:\n" + "".join(console.output))
            console.output.append(line)
            if "console password" in line:
                console.password = line.rsplit(": ", 1)[1].strip()
            if line.startswith("Node console for"):
                console.url = line.rsplit(" at ", 1)[1].strip().rstrip("/")
            if time.monotonic() > deadline:
                raise AssertionError("the console did not start:\n" + "".join(console.output))
        # Keep draining its output so a chatty console never blocks on a full pipe.
        threading.Thread(
            target=lambda: console.output.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
            daemon=True,
        ).start()
        _wait_listening(console.url)
        return console

    yield start
    for console in consoles:
        console.stop()


def _wait_listening(url: str, timeout: float = CONSOLE_START_TIMEOUT) -> None:
    """Wait until the console accepts connections (uvicorn prints its address before)."""
    port = int(url.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


#: Debian's Chromium (tools/test.sh installs it); Playwright never downloads a browser here.
CHROMIUM = Path("/usr/bin/chromium")
#: Flags for headless Chromium in a container: no sandbox (we run as root), no GPU, and
#: nothing that phones home (updates, sync, background networking).
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
#: Where browser tests save screenshots for a reviewer (gitignored).
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Debian Chromium driven by Playwright (fails, never skips, when missing)."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run tools/test.sh, which installs chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield chromium
        finally:
            chromium.close()
