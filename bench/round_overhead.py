"""Round overhead: fedloom's round time beyond local training vs. a bare gRPC transfer.

For models of about 100k, 10M and 100M float32 parameters and 3 nodes on loopback, each
training with one thread (`node start --threads 1`), with local training reduced to one
step, prints per-round wall time, the slowest node's training
time, the overhead (round minus that training), the time to move the same bytes through a
bare gRPC stream in 1 MiB chunks in the same run and the overhead's ratio to it, the same
local step run with plain torch in one process, and the researcher's peak memory after the
timed rounds and again after `--memory-rounds` rounds (memory must not grow with rounds),
with the growth over its pre-model baseline as a multiple of the model size, and the CPU time
the whole machine spent per round (less noisy than the wall clock on a shared VM).

The rounds run in one `Experiment.run` call, as a researcher runs them; a round's time is
the time between its end and the previous round's end (aggregation and checkpoint included),
taken from the researcher's progress log, and round 1, which also ships the plan's source,
is not timed.

The researcher runs the way a TOML experiment does: the plan is a file probed in a child
process (researcher/plan_probe.py), so the researcher process never imports torch; the
table's last column says whether it did.

Targets (issue 13): overhead <= 2x bare; peak <= 500 MB at 10M after 50 rounds; at 100M,
peak <= baseline + 3x the model.

With --trace, the researcher and the nodes record a timeline (common/trace.py) and the
benchmark prints, for each size, where the best steady-state round spent its time.

Usage: python bench/round_overhead.py [--sizes 1e5,1e7,1e8] [--rounds 3] [--memory-rounds 50]
       [--trace]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common.trace import TRACE_ENV  # noqa: E402

# The plain-torch baseline allocates the way a node's task process does (node/executor.py).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

N_NODES = 3
CHUNK = 1 << 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- bare gRPC transfer -------------------------------------------------------------------
def bare_grpc_seconds(total_bytes: int) -> float:
    """Stream `total_bytes` in 1 MiB chunks over one loopback gRPC stream (best of 3)."""
    import grpc

    from common.grpc_options import channel_options, server_options

    chunk = b"\0" * CHUNK
    n_chunks = math.ceil(total_bytes / CHUNK)

    def stream(request: bytes, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        for _ in range(n_chunks):
            yield chunk

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare",
        {
            "Stream": grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.server(ThreadPoolExecutor(4), options=server_options())
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    best = float("inf")
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options()) as channel:
        call = channel.unary_stream("/bench.Bare/Stream")
        for _ in range(3):
            start = time.perf_counter()
            received = sum(len(c) for c in call(b""))
            best = min(best, time.perf_counter() - start)
            assert received == n_chunks * CHUNK
    server.stop(0)
    return best


# -- researcher side (a child process, so its peak memory is its own) ---------------------
def peak_rss_bytes() -> int:
    """This process's peak resident memory since its exec (VmHWM).

    Not getrusage's ru_maxrss: Linux keeps that across exec, so a child would report the
    peak of the bench process it was forked from (which imported torch).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark needs Linux)")


def machine_busy_seconds() -> float:
    """CPU time every core of this machine spent busy since boot (/proc/stat, all processes):
    the round's work in CPU-seconds, which the wall clock hides on saturated cores."""
    # cpu user nice system idle iowait irq softirq ...: every state but idle and iowait.
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]
    return busy / os.sysconf("SC_CLK_TCK")


class RoundEnds(logging.Handler):
    """When each round ended (wall clock and machine CPU), from the researcher's progress log.

    The log line comes once the round is aggregated and checkpointed, so the time between two
    of them is the round as a multi-round run lives it, with nothing of `run()`'s own start
    and end (setup, final parameters file) in it.
    """

    def __init__(self, on_round: Callable[[int], object]) -> None:
        super().__init__(logging.INFO)
        self.on_round = on_round
        self.ends: dict[int, tuple[float, float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("round %d/%d done"):
            assert isinstance(record.args, tuple), record.args
            number = int(str(record.args[0]))
            self.ends[number] = (time.perf_counter(), machine_busy_seconds())
            self.on_round(number)


def researcher_main(width: int, rounds: int, total_rounds: int, address: str, out: Path) -> None:
    from researcher.federated_workflows import Experiment, PlanFile
    from researcher.run_options import RunOptions
    from researcher.strategies import DefaultStrategy

    exp = Experiment(
        run_options=RunOptions(address=address, out_dir=out.parent / "runs", insecure=True),
        tags=["#bench"],
        training_plan=PlanFile(ROOT / "bench" / "round_plan.py", "SquareLinear"),
        model_args={"width": width},
        training_args={"num_updates": 1, "batch_size": 2},
        round_limit=total_rounds,
        node_selection_strategy=DefaultStrategy(min_nodes=N_NODES),
        node_wait_timeout=300,
        show_progress=False,
    )
    exp.check_training_plan()  # probe the plan before measuring the baseline
    baseline = peak_rss_bytes()
    peaks: dict[int, int] = {}
    ends = RoundEnds(lambda number: peaks.setdefault(number, peak_rss_bytes()))
    progress_log = logging.getLogger("researcher.progress")
    progress_log.setLevel(logging.INFO)
    progress_log.addHandler(ends)
    # One run, as a researcher runs rounds; round 1 (it ships the plan source) is not timed.
    exp.run(rounds=total_rounds)
    assert sorted(ends.ends) == list(range(1, total_rounds + 1)), ends.ends
    history = exp.metrics_history()
    rows = [
        {
            "round": r,
            "seconds": ends.ends[r][0] - ends.ends[r - 1][0],
            "cpu": ends.ends[r][1] - ends.ends[r - 1][1],
            "max_train": max(n.train_seconds for n in history[r - 1].nodes),
            "answered": len(history[r - 1].nodes),
        }
        for r in range(2, rounds + 1)
    ]
    out.write_text(
        json.dumps(
            {
                "rounds": rows,
                "peak_rss_timed": peaks[rounds],
                "peak_rss": peak_rss_bytes(),
                "baseline_rss": baseline,
                "torch_imported": "torch" in sys.modules,
            }
        )
    )


def run_size(
    n_params: float, rounds: int, memory_rounds: int, work: Path, trace: bool
) -> dict[str, float]:
    from round_plan import SquareLinear

    from common.training_plans.source import plan_source
    from fedloom.demo import node_start_command
    from node.provision import DatasetSpec, ReviewedPlan, provision_node

    width = round(math.sqrt(n_params))
    model_bytes = width * width * 4
    address = f"127.0.0.1:{_free_port()}"
    source = plan_source(SquareLinear)
    data = work / "tiny.csv"
    data.write_text("a,y\n1,0\n2,1\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}"}
    trace_path = work / f"trace-{width}.jsonl"
    if trace:
        env[TRACE_ENV] = str(trace_path)
    nodes = []
    for i in range(N_NODES):
        home = work / f"w{width}-node{i}"
        provision_node(
            home,
            name=f"bench{i}",
            datasets=[DatasetSpec("tiny", ["#bench"], data, "csv", "y")],
            approved_plans=[ReviewedPlan("SquareLinear", source, reviewer="bench")],
        )
        nodes.append(
            subprocess.Popen(
                # One thread per node's task, the workload: 3 nodes share 2 cores.
                [*node_start_command(home, address), "--threads", "1"],
                env=env,
                stdout=open(home / "bench-node.log", "wb"),
                stderr=subprocess.STDOUT,
            )
        )
    result_path = work / f"result-{width}.json"
    try:
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--researcher",
                str(width),
                "--rounds",
                str(rounds),
                "--memory-rounds",
                str(memory_rounds),
                "--address",
                address,
                "--result",
                str(result_path),
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    finally:
        for proc in nodes:
            proc.terminate()
        for proc in nodes:
            proc.wait()
    result = json.loads(result_path.read_text())
    torch_step = plain_torch_seconds(width)
    steady = result["rounds"]  # rounds 2 to --rounds: round 1 also ships the plan source
    round_s = min(r["seconds"] for r in steady)
    train_s = min(r["max_train"] for r in steady)
    overhead = min(r["seconds"] - r["max_train"] for r in steady)
    cpu = sorted(r["cpu"] for r in steady)[len(steady) // 2]
    moved = 2 * N_NODES * model_bytes
    bare = bare_grpc_seconds(moved)
    if trace:
        best = min(steady, key=lambda r: r["seconds"] - r["max_train"])
        print_timeline(trace_path, best["round"])
    return {
        "params": width * width,
        "model_mb": model_bytes / 1e6,
        "round_s": round_s,
        "train_s": train_s,
        "overhead_s": overhead,
        "cpu_s": cpu,
        "moved_mb": moved / 1e6,
        "bare_s": bare,
        "ratio": overhead / bare,
        "peak_timed_mb": result["peak_rss_timed"] / 1e6,
        "peak_mb": result["peak_rss"] / 1e6,
        "peak_over_model": result["peak_rss"] / model_bytes,
        "extra_over_model": (result["peak_rss"] - result["baseline_rss"]) / model_bytes,
        "baseline_mb": result["baseline_rss"] / 1e6,
        "torch_s": torch_step,
        "torch_imported": result["torch_imported"],
    }


def print_timeline(path: Path, round_number: int) -> None:
    """Every span of round `round_number`, in ms from the researcher's round start."""
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    rounds = [s for s in spans if s["name"] == "researcher.round" and s["round"] == round_number]
    if not rounds:
        print(f"(no trace of round {round_number})")
        return
    begin, end = rounds[0]["start"], rounds[0]["end"]
    inside = sorted(
        (s for s in spans if begin - 1e-3 <= s["start"] <= end), key=lambda s: s["start"]
    )
    print(f"\ntimeline of round {round_number} (ms from its start; pid; span):")
    for s in inside:
        extra = ",".join(
            f"{k}={v}" for k, v in s.items() if k not in {"name", "pid", "start", "end"}
        )
        print(
            f"  {1000 * (s['start'] - begin):8.1f} {1000 * (s['end'] - begin):8.1f} "
            f"{1000 * (s['end'] - s['start']):7.1f}  {s['pid']:>7} {s['name']} {extra}"
        )


def plain_torch_seconds(width: int) -> float:
    """The nodes' local training (one SGD step on 2 rows) with plain torch (best of 3)."""
    import torch

    torch.set_num_threads(1)  # as the nodes' tasks (--threads 1)
    model = torch.nn.Linear(width, width, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.ones(2, width)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        optimizer.zero_grad()
        model(data).pow(2).mean().backward()
        optimizer.step()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,1e7,1e8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--memory-rounds", type=int, default=50, help="rounds after which peak RSS is read again"
    )
    parser.add_argument(
        "--trace", action="store_true", help="print where the best round spent its time"
    )
    parser.add_argument("--researcher", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--address", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: round 1 ships the plan source and is not timed")
    if args.researcher is not None:
        total = max(args.rounds, args.memory_rounds)
        researcher_main(args.researcher, args.rounds, total, args.address, args.result)
        return 0
    print(
        f"{N_NODES} nodes on loopback, one local step per round, best of rounds 2 to {args.rounds} "
        "of one run"
    )
    header = (
        f"{'params':>11} {'model MB':>9} {'round s':>8} {'train s':>8} {'torch s':>8} "
        f"{'overhead s':>10} {'bare s':>7} {'ratio':>6} {'cpu s':>6} {'base MB':>8} "
        f"{f'peak@{args.rounds} MB':>11} {f'peak@{args.memory_rounds} MB':>12} "
        f"{'(peak-base)/model':>17} {'torch in researcher':>19}"
    )
    print(header)
    results = []
    with tempfile.TemporaryDirectory(prefix="fedloom-bench-") as tmp:
        for size in (float(s) for s in args.sizes.split(",")):
            r = run_size(size, args.rounds, args.memory_rounds, Path(tmp), args.trace)
            results.append(r)
            print(
                f"{r['params']:>11,} {r['model_mb']:>9.1f} {r['round_s']:>8.3f} "
                f"{r['train_s']:>8.3f} {r['torch_s']:>8.3f} {r['overhead_s']:>10.3f} "
                f"{r['bare_s']:>7.3f} {r['ratio']:>6.2f} {r['cpu_s']:>6.2f} {r['baseline_mb']:>8.0f} "
                f"{r['peak_timed_mb']:>11.0f} {r['peak_mb']:>12.0f} "
                f"{r['extra_over_model']:>17.2f} {'yes' if r['torch_imported'] else 'no':>19}",
                flush=True,
            )
    print(
        "train s: the slowest node's local training; torch s: the same step with plain torch in "
        "one process; overhead = round - train; bare: the same bytes on one bare gRPC stream; "
        "cpu s: CPU-seconds the whole machine spent busy per round (median), all processes"
    )
    print_targets(results, args.memory_rounds)
    return 0


def print_targets(results: list[dict[str, float]], memory_rounds: int) -> None:
    """Issue 13's targets next to this run's figures, for the sizes that have one."""
    print("\ntargets (issue 13), from this run:")
    for r in results:
        millions = r["params"] / 1e6
        if millions < 5:
            continue  # the small model's overhead is fixed latency; no target
        ratio = r["ratio"]
        print(
            f"  {millions:.0f}M: overhead / bare <= 2x: {ratio:.2f}x "
            f"{'met' if ratio <= 2 else 'NOT met'}"
        )
        if 5 <= millions < 50:
            peak = r["peak_mb"]
            note = "" if memory_rounds >= 50 else f" (after {memory_rounds} rounds, not 50)"
            print(
                f"  {millions:.0f}M: researcher peak <= 500 MB{note}: {peak:.0f} MB "
                f"{'met' if peak <= 500 else 'NOT met'}"
            )
        if millions >= 50:
            extra = r["extra_over_model"]
            print(
                f"  {millions:.0f}M: researcher peak <= base + 3x model: base + {extra:.2f}x "
                f"{'met' if extra <= 3 else 'NOT met'}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
