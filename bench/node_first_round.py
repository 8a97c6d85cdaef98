"""First round vs later rounds on a freshly started node, with torch.optim and fedloom optimizers.

For each optimizer kind (a native `torch.optim.SGD` plan and a fedloom `Optimizer(lr)` plan)
a new node process starts, the researcher waits until it has said hello, then runs rounds of
one epoch (32 steps of 64 rows, the 10.26M-parameter MLP of issue 13). Prints every round's wall
time, the node's training time and the rest, and the first round over the median of the
others (target: at most 1.10x, i.e. the node is warm when it says hello and no task pays for
a lazy import). On a shared machine training time swings with the load; the time outside
training is the steadier view of what a cold node would add.

Usage: python bench/node_first_round.py [--rounds 5] [--hidden 3170]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.data import DataManager
from common.optimizers.optimizer import Optimizer
from common.training_plans import TorchTrainingPlan

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.10


class FirstRoundMlp(TorchTrainingPlan):  # type: ignore[misc]
    """An MLP on generated data; `model_args['native']` picks torch.optim.SGD over Optimizer."""

    def init_dependencies(self):  # type: ignore[no-untyped-def]
        return [
            "import numpy as np",
            "import torch",
            "from common.data import DataManager",
            "from common.optimizers.optimizer import Optimizer",
        ]

    def init_model(self, model_args):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        hidden = model_args["hidden"]
        return torch.nn.Sequential(
            torch.nn.Linear(64, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )

    def init_optimizer(self):  # type: ignore[no-untyped-def]
        if self.model_args()["native"]:
            return torch.optim.SGD(self.model().parameters(), lr=0.01)
        return Optimizer(lr=0.01)

    def training_data(self):  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(0)
        x = rng.normal(size=(2000, 64)).astype("float32")
        y = rng.normal(size=2000).astype("float32")
        return DataManager(dataset=x, target=y)

    def training_step(self, data, target):  # type: ignore[no-untyped-def]
        return torch.nn.functional.mse_loss(self.model()(data).squeeze(1), target)


def researcher_main(native: bool, hidden: int, rounds: int, address: str, out: Path) -> None:
    from researcher.federated_workflows import Experiment
    from researcher.run_options import RunOptions
    from researcher.server import get_server

    options = RunOptions(address=address, out_dir=out.parent / "runs", insecure=True)
    exp = Experiment(
        run_options=options,
        tags=["#first"],
        training_plan_class=FirstRoundMlp,
        model_args={"hidden": hidden, "native": native},
        training_args={"epochs": 1, "batch_size": 64},
        round_limit=rounds,
        node_wait_timeout=300,
    )
    # The researcher builds the plan once (model, and for a torch.optim plan the torch._dynamo
    # import): a researcher-side cost, kept out of the node-side figure measured here.
    exp.training_plan()
    server = get_server(options)
    hello_wait = time.perf_counter()
    if not server.directory.wait_until(lambda: len(server.directory.connected()) >= 1, 300):
        raise SystemExit("the node did not connect within 300 s")
    hello_wait = time.perf_counter() - hello_wait
    walls = []
    for _ in range(rounds):
        start = time.perf_counter()
        exp.run(rounds=1)
        walls.append(time.perf_counter() - start)
    rows = [
        {"seconds": wall, "train": max(n.train_seconds for n in r.nodes)}
        for r, wall in zip(exp.metrics_history(), walls, strict=True)
    ]
    out.write_text(json.dumps({"rounds": rows, "hello_wait": hello_wait}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_kind(native: bool, hidden: int, rounds: int, work: Path) -> dict[str, Any]:
    from common.training_plans.source import plan_source
    from fedloom.demo import node_start_command
    from node.provision import DatasetSpec, ReviewedPlan, provision_node

    address = f"127.0.0.1:{_free_port()}"
    kind = "native" if native else "fedloom"
    data = work / "tiny.csv"
    data.write_text("a,y\n1,0\n2,1\n")
    home = work / f"node-{kind}"
    provision_node(
        home,
        name=f"first-{kind}",
        datasets=[DatasetSpec("tiny", ["#first"], data, "csv", "y")],
        approved_plans=[ReviewedPlan("FirstRoundMlp", plan_source(FirstRoundMlp), "bench")],
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}"}
    result_path = work / f"result-{kind}.json"
    with open(home / "bench-node.log", "wb") as node_log:
        node = subprocess.Popen(
            node_start_command(home, address), env=env, stdout=node_log, stderr=subprocess.STDOUT
        )
        try:
            subprocess.run(
                [sys.executable, __file__, "--researcher", kind, "--hidden", str(hidden),
                 "--rounds", str(rounds), "--address", address, "--result", str(result_path)],
                env=env, check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            node.terminate()
            node.wait()
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=3170)
    parser.add_argument("--researcher", choices=["native", "fedloom"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--address", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.researcher:
        researcher_main(
            args.researcher == "native", args.hidden, args.rounds, args.address, args.result
        )
        return 0
    n_params = 64 * args.hidden + args.hidden + args.hidden * args.hidden + 2 * args.hidden + 1
    print(f"MLP 64-{args.hidden}-{args.hidden}-1 ({n_params / 1e6:.2f}M parameters), 1 node, "
          f"1 epoch of 32 steps per round, {args.rounds} rounds")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fedloom-first-round-") as tmp:
        for native in (True, False):
            label = "torch.optim.SGD" if native else "fedloom Optimizer(lr)"
            result = run_kind(native, args.hidden, args.rounds, Path(tmp))
            rows = result["rounds"]
            walls = [r["seconds"] for r in rows]
            later = statistics.median(walls[1:])
            ratio = walls[0] / later
            print(f"\n{label}: node hello after {result['hello_wait']:.1f} s")
            for index, row in enumerate(rows, start=1):
                print(
                    f"  round {index}: {row['seconds']:6.2f} s, node training {row['train']:6.2f} s, "
                    f"rest {row['seconds'] - row['train']:5.2f} s"
                )
            rest = [r["seconds"] - r["train"] for r in rows]
            extra = rest[0] - statistics.median(rest[1:])
            verdict = "met" if ratio <= TARGET else "NOT met"
            print(
                f"  first / median of later rounds: {ratio:.3f}x, target <= {TARGET:.2f}x: {verdict}"
            )
            print(
                f"  time outside training, first round minus median of later rounds: {extra:+.2f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
