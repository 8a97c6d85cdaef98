"""Simulation speed and memory: fedloom's Ray simulation against Flower's, same workload.

100 virtual nodes holding a Dirichlet(0.5) split of 10,000 generated samples (20 features,
4 classes), a small MLP (20-64-64-4, about 6k parameters) trained one local epoch in
batches of 32 by torch.optim.SGD, FedAvg, 20 rounds, 10 % of the nodes sampled per round,
2 Ray actors of 1 CPU each. Each engine runs in its own process (Flower in its own venv,
created under .bench-venv/flwr on first use with `pip install "flwr[simulation]"`) which
samples the proportional set size (PSS) of its whole process tree (driver, Ray's daemons
and workers) every 0.2 s. Printed per engine: wall time from start to the end of round 20,
rounds/s over rounds 2-20 (round 1 starts the actors), and the peak tree memory; then the
ratios fedloom / Flower.

Target (issue 18): faster than Flower per round, at no more memory.

Usage: python bench/simulation.py [--nodes 100] [--rounds 20] [--sample 0.1] [--pool 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FLOWER_VENV = ROOT / ".bench-venv" / "flwr"
FLOWER_REQUIREMENTS = ["flwr[simulation]", "torch==2.13.0", "pandas", "psutil"]

FEATURES, HIDDEN, CLASSES = 20, 64, 4
SAMPLES = 10_000
SPLIT = "dirichlet:0.5"
BATCH, LR = 32, 0.05
#: Seconds between memory samples: often enough to catch a round's peak (rounds last ~1 s).
SAMPLE_SECONDS = 0.2

PLAN_SOURCE = f"""
import pandas as pd
import torch

from common.data import DataManager
from common.training_plans import TorchTrainingPlan


class BenchMlp(TorchTrainingPlan):
    def init_dependencies(self):
        return ["import pandas as pd", "import torch", "from common.data import DataManager"]

    def init_model(self):
        return torch.nn.Sequential(
            torch.nn.Linear({FEATURES}, {HIDDEN}), torch.nn.ReLU(),
            torch.nn.Linear({HIDDEN}, {HIDDEN}), torch.nn.ReLU(),
            torch.nn.Linear({HIDDEN}, {CLASSES}),
        )

    def init_optimizer(self):
        return torch.optim.SGD(self.model().parameters(), lr={LR})

    def training_data(self):
        df = pd.read_csv(self.dataset_path)
        return DataManager(dataset=df.drop(columns="y").values.astype("float32"),
                           target=df["y"].values)

    def training_step(self, data, target):
        return torch.nn.functional.cross_entropy(self.model()(data), target.long())
"""


# ------------------------------------------------------------------ memory of a process tree


class TreeMemory:
    """Peak PSS of this process and all its descendants, sampled in a thread."""

    def __init__(self) -> None:
        import psutil

        self._root = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(SAMPLE_SECONDS):
            total = 0
            for proc in [self._root, *self._root.children(recursive=True)]:
                try:
                    total += proc.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# --------------------------------------------------------------------------- the engines


def run_fedloom(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    import ray

    from fedloom.simulation import Simulation
    from researcher.federated_workflows import Experiment
    from researcher.plan_probe import PlanFile
    from researcher.strategies import SamplingStrategy

    memory = TreeMemory()
    started = time.monotonic()
    ray.init(
        num_cpus=args.pool,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        log_to_driver=False,
        logging_level="ERROR",
    )
    plan = work / "plan.py"
    plan.write_text(PLAN_SOURCE, encoding="utf-8")
    with Simulation(
        nodes=args.nodes, data=work / "data.csv", split=SPLIT, target="y", pool=args.pool
    ) as simulation:
        exp = Experiment(
            tags=["#bench"],
            training_plan=PlanFile(plan, "BenchMlp"),
            training_args={"epochs": 1, "batch_size": BATCH, "round_timeout": 3600},
            round_limit=args.rounds,
            node_selection_strategy=SamplingStrategy(fraction=args.sample, seed=0),
            backend=simulation,
            experimentation_folder=work / "fedloom-run",
            show_progress=False,
        )
        exp.run(rounds=1)
        first_done = time.monotonic()
        exp.run()
        ended = time.monotonic()
    ray.shutdown()
    return {
        "wall_seconds": ended - started,
        "rounds_per_second": (args.rounds - 1) / (ended - first_done),
        "peak_bytes": memory.stop(),
        "last_loss": exp.metrics_history()[-1].mean_loss,
    }


def run_flower(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import flwr
    import numpy as np
    import pandas as pd
    import torch
    from flwr.client import ClientApp, NumPyClient
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    shards = sorted((work / "shards").glob("node-*.csv"), key=lambda p: int(p.stem[5:]))

    def model() -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(FEATURES, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, CLASSES),
        )

    class MlpClient(NumPyClient):  # type: ignore[misc]
        def __init__(self, shard: Path) -> None:
            df = pd.read_csv(shard)
            self.x = torch.tensor(df.drop(columns="y").values.astype("float32"))
            self.y = torch.tensor(df["y"].values).long()
            self.net = model()

        def fit(self, parameters: list[Any], config: dict[str, Any]) -> Any:
            with torch.no_grad():
                for p, v in zip(self.net.parameters(), parameters, strict=True):
                    p.copy_(torch.from_numpy(v))
            optimizer = torch.optim.SGD(self.net.parameters(), lr=LR)
            losses = []
            for start in range(0, len(self.x), BATCH):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(
                    self.net(self.x[start : start + BATCH]), self.y[start : start + BATCH]
                )
                loss.backward()
                optimizer.step()
                losses.append(float(loss))
            params = [p.detach().numpy().copy() for p in self.net.parameters()]
            return params, len(self.x), {"loss": float(np.mean(losses))}

    def client_fn(context: Any) -> Any:
        return MlpClient(shards[int(context.node_config["partition-id"])]).to_client()

    rounds_done: list[float] = []

    class TimedFedAvg(FedAvg):  # type: ignore[misc]
        def aggregate_fit(self, *a: Any, **k: Any) -> Any:
            out = super().aggregate_fit(*a, **k)
            rounds_done.append(time.monotonic())
            return out

    initial = [p.detach().numpy() for p in model().parameters()]

    def server_fn(context: Any) -> Any:
        strategy = TimedFedAvg(
            fraction_fit=args.sample,
            fraction_evaluate=0.0,
            min_fit_clients=1,
            min_available_clients=args.nodes,
            initial_parameters=flwr.common.ndarrays_to_parameters(initial),
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=args.rounds))

    memory = TreeMemory()
    started = time.monotonic()
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=args.nodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": args.pool,
                "include_dashboard": False,
                "object_store_memory": 100 * 1024 * 1024,
                "log_to_driver": False,
            },
        },
    )
    return {
        "wall_seconds": rounds_done[-1] - started,
        "rounds_per_second": (len(rounds_done) - 1) / (rounds_done[-1] - rounds_done[0]),
        "peak_bytes": memory.stop(),
        "rounds": len(rounds_done),
    }


# ------------------------------------------------------------------------------ the driver


def prepare(work: Path, args: argparse.Namespace) -> None:
    """The data (one CSV) and its split into node files (Flower reads these; fedloom
    splits the same CSV with the same split and seed itself)."""
    import numpy as np

    from common.data_split import parse_split
    from common.split_files import split_file

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(CLASSES, FEATURES)) * 2
    y = rng.integers(0, CLASSES, size=SAMPLES)
    x = centers[y] + rng.normal(size=(SAMPLES, FEATURES))
    header = ",".join([f"x{i}" for i in range(FEATURES)] + ["y"])
    table = np.column_stack([x, y])
    np.savetxt(work / "data.csv", table, delimiter=",", header=header, comments="", fmt="%.6g")
    split_file(work / "data.csv", args.nodes, parse_split(SPLIT), work / "shards", target="y")


def ensure_flower_venv() -> Path:
    python = FLOWER_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing Flower into {FLOWER_VENV} (first run only)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(FLOWER_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *FLOWER_REQUIREMENTS], check=True
        )
    return python


def child(engine: str, python: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    argv = [str(python), __file__, "--engine", engine, "--work", str(work)]
    argv += ["--nodes", str(args.nodes), "--rounds", str(args.rounds)]
    argv += ["--sample", str(args.sample), "--pool", str(args.pool)]
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--sample", type=float, default=0.1)
    parser.add_argument("--pool", type=int, default=2)
    parser.add_argument("--engine", choices=("fedloom", "flower"), default=None)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    if args.engine is not None:
        run = run_fedloom if args.engine == "fedloom" else run_flower
        print(json.dumps(run(args.work, args)))
        return
    flower_python = ensure_flower_venv()
    with tempfile.TemporaryDirectory(prefix="fedloom-bench-sim-") as tmp:
        work = Path(tmp)
        sys.path.insert(0, str(ROOT))
        prepare(work, args)
        load = os.getloadavg()[0]
        results = {
            "fedloom": child("fedloom", Path(sys.executable), work, args),
            "flower": child("flower", flower_python, work, args),
        }
    print(
        f"{args.nodes} virtual nodes, {args.rounds} rounds, {args.sample:.0%} sampled per round, "
        f"MLP {FEATURES}-{HIDDEN}-{HIDDEN}-{CLASSES}, {args.pool} actors; "
        f"load average at start {load:.1f} on {os.cpu_count()} CPU(s)"
    )
    print(f"{'engine':8} {'wall s':>8} {'rounds/s':>9} {'peak MB':>8}")
    for name, r in results.items():
        print(
            f"{name:8} {r['wall_seconds']:8.1f} {r['rounds_per_second']:9.2f} "
            f"{r['peak_bytes'] / 2**20:8.0f}"
        )
    ours, theirs = results["fedloom"], results["flower"]
    print(
        f"fedloom / Flower: rounds/s x{ours['rounds_per_second'] / theirs['rounds_per_second']:.2f}"
        f", peak memory x{ours['peak_bytes'] / theirs['peak_bytes']:.2f}, "
        f"wall time x{ours['wall_seconds'] / theirs['wall_seconds']:.2f}"
    )


if __name__ == "__main__":
    main()
