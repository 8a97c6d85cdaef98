"""The ``fedloom node`` command: node home, datasets, training-plan approval, daemon start.

``register(subparsers)`` adds the command to the ``fedloom`` parser; ``main(argv)`` runs
it standalone (``python -m node.cli node --home DIR dataset list``). Every sub-command is
one function ``(args) -> int``: 0 on success, 1 when a check finds a problem (``dataset
verify``), 2 on an error, reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from common.errors import ConfigurationError, FedloomError
from node import actions
from node.actions import Actor
from node.console_password import ensure_password, reset_password
from node.containment.memory import DEFAULT_MEMORY_FRACTION
from node.containment.settings import CONFINEMENT_MODES
from node.datasets import DATA_TYPES
from node.home import DEFAULT_HOME, HOME_ENV_VAR, NodeHome
from node.plans import PlanRecord, PlanRegistry
from node.privacy_ledger import BudgetStatus, PrivacyLedger
from node.registry import DatasetRecord, DatasetRegistry

__all__ = ["main", "register"]

logger = logging.getLogger(__name__)

#: Exit code of a command that failed (bad input, missing home...), as argparse uses.
EXIT_ERROR = 2
#: Exit code of a check that ran and found a problem (a changed dataset).
EXIT_CHECK_FAILED = 1

Command = Callable[[argparse.Namespace], int]


def _command(func: Command) -> Command:
    """Turn fedloom errors (and OS errors) into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except FedloomError as exc:
            sys.stderr.write(f"error: {exc}\n")
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            sys.stderr.write(f"error: {exc.strerror or exc}{where}\n")
        return EXIT_ERROR

    return run


def _console() -> Console:
    # Built per call so output goes to whatever sys.stdout is now (tests swap it).
    return Console(highlight=False)


def _write_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _home_path(args: argparse.Namespace) -> Path:
    if args.home is not None:
        return Path(args.home)
    return Path(os.environ.get(HOME_ENV_VAR) or DEFAULT_HOME)


def _home(args: argparse.Namespace) -> NodeHome:
    return NodeHome.open(_home_path(args))


def _split_tags(text: str) -> list[str]:
    return text.split(",")


def _cli_actor() -> Actor:
    """The operator as the audit trail records CLI actions: the local user name."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = f"uid {os.getuid()}"
    return Actor("cli", user)


# ------------------------------------------------------------------- init


@_command
def cmd_init(args: argparse.Namespace) -> int:
    """Create a node home."""
    node_id = args.node_id
    if args.cert is not None:
        from common.tls import read_node_id

        cert_id = read_node_id(args.cert)
        if node_id is not None and node_id != cert_id:
            raise ConfigurationError(
                f"--node-id {node_id} differs from the id {cert_id!r} in {args.cert}: pass only one"
            )
        node_id = cert_id
    home = NodeHome(_home_path(args)).init(args.name, node_id=node_id)
    console = _console()
    console.print(f"Initialised node home {home.path}", markup=False, soft_wrap=True)
    console.print(
        f"  node id: {home.node_id}\n  name:    {home.name}", markup=False, soft_wrap=True
    )
    secret = ensure_password(home.db_path)
    if secret is not None:
        console.print(
            f"  web console password: {secret}\n"
            "  (shown only this once: keep it; `fedloom node console --reset-password` replaces it)",
            markup=False,
            soft_wrap=True,
        )
    node = f"fedloom node --home {shlex.quote(str(home.path))}" if args.home else "fedloom node"
    console.print(
        f"Next: `{node} dataset add --name NAME --tags '#tag' --path FILE`, then `{node} start`.",
        markup=False,
        soft_wrap=True,
    )
    return 0


# --------------------------------------------------------------- datasets


def _budgets(db_path: Path, records: Sequence[DatasetRecord]) -> dict[str, BudgetStatus]:
    """Privacy budget and spent ε of each dataset that has a budget."""
    ledger = PrivacyLedger(db_path)
    statuses = {r.name: ledger.status(r.name) for r in records}
    return {name: status for name, status in statuses.items() if status is not None}


def _budget_json(status: BudgetStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {
        "epsilon": status.budget.epsilon,
        "delta": status.budget.delta,
        "per": status.budget.scope,
        "spent_max": status.spent_max,
    }


def _datasets_table(
    records: Sequence[DatasetRecord], budgets: dict[str, BudgetStatus] | None = None
) -> Table:
    budgets = budgets or {}
    table = Table(title="Datasets")
    columns = ["Name", "Tags", "Type", "Samples", "Shape", "Target", "Added"]
    if budgets:
        columns.append("Privacy budget")
    for column in columns:
        # Short fixed-format cells stay on one line; free text folds.
        table.add_column(column, overflow="fold", no_wrap=column in ("Type", "Shape", "Added"))
    for r in records:
        table.add_row(
            r.name,
            ", ".join(r.tags),
            r.data_type,
            str(r.n_samples),
            "x".join(str(n) for n in r.shape),
            r.target or "",
            r.added_at,
            *([budgets[r.name].describe() if r.name in budgets else "none"] if budgets else []),
        )
    return table


def _dataset_details(record: DatasetRecord, budget: BudgetStatus | None = None) -> Table:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    exists = Path(record.path).exists()
    rows = [
        ("name", record.name),
        ("tags", ", ".join(record.tags)),
        ("path", record.path + ("" if exists else "  (MISSING)")),
        ("type", record.data_type),
        ("samples", str(record.n_samples)),
        ("shape", "x".join(str(n) for n in record.shape)),
        ("classes" if record.data_type == "images" else "columns", ", ".join(record.columns)),
        ("target", record.target or ""),
        ("sha256", record.sha256),
        ("added", record.added_at),
        ("description", record.description),
        *((key.replace("_", "-"), value) for key, value in record.options.items()),
        ("privacy budget", budget.describe() if budget is not None else "none"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


@_command
def cmd_dataset_add(args: argparse.Namespace) -> int:
    """Register a dataset under tags."""
    db_path = _home(args).db_path
    registry = DatasetRegistry(db_path)
    tags = _split_tags(args.tags)
    record = actions.add_dataset(
        db_path,
        _cli_actor(),
        args.name,
        tags,
        args.path,
        data_type=args.type,
        target=args.target,
        description=args.description,
        options={"demographics": args.demographics, "index_col": args.index_col},
    )
    if args.json:
        _write_json(record.to_dict())
        return 0
    console = _console()
    console.print(
        f"Registered {record.name}: {record.data_type}, {record.n_samples} samples, "
        f"shape {record.shape}, tags {', '.join(record.tags)}",
        markup=False,
        soft_wrap=True,
    )
    overlapping = [
        other.name
        for other in registry.list()
        if other.name != record.name
        and (set(other.tags) <= set(record.tags) or set(record.tags) <= set(other.tags))
    ]
    if overlapping:
        console.print(
            f"Note: a researcher asking for tags {', '.join(record.tags)} may also match "
            f"{', '.join(overlapping)}; distinct tags avoid the ambiguity.",
            markup=False,
            soft_wrap=True,
        )
    return 0


@_command
def cmd_dataset_update(args: argparse.Namespace) -> int:
    """Accept a dataset's changed content (after `verify` says CHANGED): same path and tags."""
    record = actions.reregister_dataset(_home(args).db_path, _cli_actor(), args.name)
    if args.json:
        _write_json(record.to_dict())
        return 0
    _console().print(
        f"Re-registered {record.name}: {record.data_type}, {record.n_samples} samples, shape "
        f"{record.shape}, sha256 {record.sha256[:12]}",
        markup=False,
        soft_wrap=True,
    )
    return 0


@_command
def cmd_dataset_list(args: argparse.Namespace) -> int:
    """List registered datasets."""
    db_path = _home(args).db_path
    records = DatasetRegistry(db_path).list()
    budgets = _budgets(db_path, records)
    if args.json:
        _write_json(
            [{**r.to_dict(), "privacy_budget": _budget_json(budgets.get(r.name))} for r in records]
        )
    elif not records:
        _console().print("No dataset registered: add one with `fedloom node dataset add`.")
    else:
        _console().print(_datasets_table(records, budgets))
    return 0


@_command
def cmd_dataset_show(args: argparse.Namespace) -> int:
    """Show one dataset."""
    db_path = _home(args).db_path
    record = DatasetRegistry(db_path).get(args.name)
    budget = PrivacyLedger(db_path).status(record.name)
    if args.json:
        _write_json(
            {
                **record.to_dict(),
                "path_exists": Path(record.path).exists(),
                "privacy_budget": _budget_json(budget),
            }
        )
    else:
        _console().print(_dataset_details(record, budget))
    return 0


@_command
def cmd_dataset_budget(args: argparse.Namespace) -> int:
    """Set (or remove) the privacy budget of a dataset: ε at δ, per experiment or researcher."""
    db_path = _home(args).db_path
    record = DatasetRegistry(db_path).get(args.name)
    ledger = PrivacyLedger(db_path)
    if args.remove:
        removed = ledger.remove_budget(record.name)
        _console().print(
            f"Removed the privacy budget of {record.name}."
            if removed
            else f"{record.name} had no privacy budget.",
            markup=False,
        )
        return 0
    if args.epsilon is None or args.delta is None:
        raise ConfigurationError(
            "dataset budget needs --epsilon and --delta (e.g. --epsilon 3 --delta 1e-5), or "
            "--remove"
        )
    budget = ledger.set_budget(record.name, args.epsilon, args.delta, args.per)
    _console().print(
        f"Privacy budget of {record.name}: {budget.describe()}. Tasks on it must use "
        "record-level DP (training_args['dp']); one that would exceed the budget is refused.",
        markup=False,
        soft_wrap=True,
    )
    return 0


@_command
def cmd_dataset_remove(args: argparse.Namespace) -> int:
    """Unregister a dataset (its files stay where they are)."""
    record = actions.remove_dataset(_home(args).db_path, _cli_actor(), args.name)
    _console().print(
        f"Removed dataset {record.name} from the registry; {record.path} was left untouched.",
        markup=False,
        soft_wrap=True,
    )
    return 0


@_command
def cmd_dataset_min_cohort(args: argparse.Namespace) -> int:
    """Show or set the smallest cohort a dataset's statistics are given about (node/analytics)."""
    from node.analytics import CohortPolicy

    policy = CohortPolicy(_home(args).db_path)
    if args.size is not None:
        policy.set_min_cohort(args.name, args.size)
    size = policy.min_cohort(args.name)
    if args.json:
        _write_json({"dataset": args.name, "min_cohort": size})
    else:
        _console().print(
            f"Dataset {args.name}: cohort statistics are refused below {size} non-missing values "
            "per column (and complete rows for a correlation).",
            markup=False,
            soft_wrap=True,
        )
    return 0


@_command
def cmd_dataset_verify(args: argparse.Namespace) -> int:
    """Re-hash datasets and report those that changed since registration."""
    registry = DatasetRegistry(_home(args).db_path)
    names = args.names or [r.name for r in registry.list()]
    results = [registry.verify(name) for name in names]
    if args.json:
        _write_json(
            [
                {
                    "name": r.name,
                    "ok": r.ok,
                    "expected_sha256": r.expected_sha256,
                    "actual_sha256": r.actual_sha256,
                    "problems": list(r.problems),
                }
                for r in results
            ]
        )
    else:
        console = _console()
        for r in results:
            if r.ok:
                console.print(f"{r.name}: unchanged", markup=False, soft_wrap=True)
            for problem in r.problems:
                console.print(f"{r.name}: CHANGED: {problem}", markup=False, soft_wrap=True)
        if not all(r.ok for r in results):
            home = f" --home {shlex.quote(str(_home_path(args)))}" if args.home else ""
            console.print(
                f"If the change is intended, re-register: `fedloom node{home} dataset update NAME`",
                markup=False,
                soft_wrap=True,
            )
    return 0 if all(r.ok for r in results) else EXIT_CHECK_FAILED


# ------------------------------------------------------------------ plans


def _plans_table(records: Sequence[PlanRecord]) -> Table:
    table = Table(title="Training plans")
    for column in ("Id", "Class", "Status", "Researcher", "Requested", "Decided"):
        table.add_column(column, overflow="fold", no_wrap=column in ("Id", "Status", "Requested"))
    for r in records:
        table.add_row(
            r.plan_id, r.class_name, r.status, r.researcher, r.requested_at, r.decided_at or ""
        )
    return table


@_command
def cmd_plan_list(args: argparse.Namespace) -> int:
    """List training plans seen by this node."""
    records = PlanRegistry(_home(args).db_path).list(args.status)
    if args.json:
        _write_json([r.to_dict(with_source=False) for r in records])
    elif not records:
        _console().print("No training plan has been requested yet.")
    else:
        _console().print(_plans_table(records))
    return 0


@_command
def cmd_plan_show(args: argparse.Namespace) -> int:
    """Print a plan's details and source."""
    record = PlanRegistry(_home(args).db_path).get(args.id)
    if args.json:
        _write_json(record.to_dict())
        return 0
    console = _console()
    console.print(
        f"plan {record.plan_id}  class {record.class_name}  status {record.status}\n"
        f"sha256 {record.sha256}\n"
        f"requested {record.requested_at} by {record.researcher}"
        + (f", decided {record.decided_at}" if record.decided_at else "")
        + (f"\nreason: {record.reason}" if record.reason else ""),
        markup=False,
        soft_wrap=True,
    )
    if console.is_terminal:
        console.print(Syntax(record.source, "python", line_numbers=True))
    else:
        sys.stdout.write("\n" + record.source)
    return 0


def _decide(args: argparse.Namespace, approve: bool) -> int:
    decide = actions.approve_plan if approve else actions.reject_plan
    record = decide(_home(args).db_path, _cli_actor(), args.id, args.reason)
    _console().print(
        f"Plan {record.plan_id} ({record.class_name}) is now {record.status}.",
        markup=False,
        soft_wrap=True,
    )
    return 0


@_command
def cmd_plan_approve(args: argparse.Namespace) -> int:
    """Allow a training plan to run on this node."""
    return _decide(args, approve=True)


@_command
def cmd_plan_reject(args: argparse.Namespace) -> int:
    """Forbid a training plan on this node."""
    return _decide(args, approve=False)


# ------------------------------------------------------------ containment


@_command
def cmd_containment(args: argparse.Namespace) -> int:
    """Probe what this machine confines, with this home's settings; 1 if anything is not."""
    from node.containment import ContainmentSettings, probe_support

    settings = ContainmentSettings.resolve(_home(args).config)
    support = probe_support()
    lines = settings.describe(support)
    if args.json:
        _write_json(
            {
                "max_memory_mb": settings.max_memory_mb,
                "confinement": settings.confinement,
                "threads": settings.threads,
                "landlock_abi": support.landlock_abi,
                "writes_confined": settings.confinement != "off" and support.confines_writes,
                "network_isolated": settings.confinement != "off" and support.isolates_network,
                "network_means": support.network_means(),
                "problems": [text for ok, text in lines if not ok],
            }
        )
    else:
        console = _console()
        for ok, text in lines:
            console.print(f"{'ok ' if ok else 'NO '} {text}", markup=False, soft_wrap=True)
    return 0 if all(ok for ok, _ in lines) else EXIT_CHECK_FAILED


# ------------------------------------------------------------------ start


def _tls_files(args: argparse.Namespace) -> dict[str, str | None] | None:
    """Validated TLS file paths for the daemon, or None for a plain-text channel."""
    given = {"ca": args.ca, "cert": args.cert, "key": args.key}
    if args.insecure:
        if any(given.values()):
            raise ConfigurationError(
                "--insecure turns TLS off, but --ca/--cert/--key were given: pass one or the other"
            )
        return None
    if (args.cert is None) != (args.key is None):
        raise ConfigurationError(
            "--cert and --key go together (the node's client certificate and its private key)"
        )
    tls: dict[str, str | None] = {}
    for option, value in given.items():
        if value is not None and not Path(value).is_file():
            raise ConfigurationError(f"--{option} file {value} does not exist")
        tls[option] = str(Path(value).absolute()) if value is not None else None
    return tls


def check_researcher_address(address: str) -> str:
    """HOST:PORT as given; without a port gRPC would silently dial 443, so that is an error."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or host.endswith(":") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(
            f"--researcher {address!r} needs a port: expected HOST:PORT, e.g. "
            f"{address.strip() or 'researcher.example.org'}:50051 (IPv6: [::1]:50051)"
        )
    return address.strip()


@_command
def cmd_start(args: argparse.Namespace) -> int:
    """Run the node daemon until interrupted."""
    if args.task_timeout is not None and args.task_timeout <= 0:
        raise ConfigurationError("--task-timeout must be a positive number of seconds")
    if args.max_memory_mb is not None and args.max_memory_mb < 0:
        raise ConfigurationError("--max-memory-mb must be a number of megabytes, or 0 for no limit")
    if args.threads is not None and args.threads < 0:
        raise ConfigurationError("--threads must be a number of threads, or 0 for torch's default")
    home = _home(args)
    tls = _tls_files(args)
    researcher = check_researcher_address(args.researcher or home.researcher_address)
    if args.allow_unapproved:
        logger.warning(
            "--allow-unapproved: node %s will run ANY training plan a researcher sends, "
            "without operator approval. Use this only for local tests and demos.",
            home.node_id,
        )
    cert = tls.get("cert") if tls else None
    if cert is not None:
        from common.tls import read_node_id

        cert_id = read_node_id(Path(cert))
        if cert_id != home.node_id:
            raise ConfigurationError(
                f"the certificate {cert} was issued to node {cert_id!r} but this home is "
                f"node {home.node_id!r}: use that node's certificate (`fedloom certs add-node "
                f"--node {home.node_id}`) or a home created with `init --node-id {cert_id}`"
            )
    # Imported here: the daemon pulls in gRPC and torch, which other commands do not need.
    from node.daemon import run_node

    return run_node(
        home,
        researcher,
        allow_unapproved=args.allow_unapproved,
        insecure=args.insecure,
        tls=tls,
        task_timeout=args.task_timeout,
        max_memory_mb=args.max_memory_mb,
        confinement=args.confinement,
        threads=args.threads,
    )


# ---------------------------------------------------------------- console


@_command
def cmd_console(args: argparse.Namespace) -> int:
    """Serve the operator's web console until interrupted."""
    home = _home(args)
    if args.reset_password:
        secret = reset_password(home.db_path)
        _console().print(
            f"New web console password: {secret}\n(shown only this once; sessions opened with "
            "the old one end when the console restarts)",
            markup=False,
            soft_wrap=True,
        )
        return 0
    # Imported here: the console's web dependencies are an optional extra.
    from node.console.server import serve_console

    return serve_console(home, host=args.host, port=args.port, cert=args.cert, key=args.key)


# ----------------------------------------------------------------- parser


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``node`` command and its sub-commands to the ``fedloom`` parser."""
    node = subparsers.add_parser("node", help="run and manage a fedloom node")
    node.add_argument(
        "--home",
        default=None,
        help=f"node home directory (default: ${HOME_ENV_VAR}, else ./{DEFAULT_HOME})",
    )
    commands = node.add_subparsers(dest="node_command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create the node home (id, keys, registry)")
    init.add_argument("--name", help="human-readable node name (default: the node id)")
    init.add_argument(
        "--node-id",
        default=None,
        help="node id (default: random); use the id your TLS certificate was issued to",
    )
    init.add_argument(
        "--cert",
        type=Path,
        default=None,
        help="take the node id from this TLS certificate (node.pem from `fedloom certs`)",
    )
    init.set_defaults(func=cmd_init)

    dataset = commands.add_parser("dataset", help="register and manage datasets")
    dataset_commands = dataset.add_subparsers(
        dest="dataset_command", required=True, metavar="ACTION"
    )
    add = dataset_commands.add_parser("add", help="register a dataset under tags")
    add.add_argument("--name", required=True, help="unique dataset name")
    add.add_argument("--tags", required=True, help="comma-separated tags, e.g. '#heart,#csv'")
    add.add_argument("--path", required=True, help="file or image folder on this node")
    add.add_argument("--type", choices=DATA_TYPES, help="dataset type (default: from extension)")
    add.add_argument(
        "--target", help="target column (csv, medical-folder demographics) or array name (npz)"
    )
    add.add_argument(
        "--demographics",
        help="medical-folder: demographics CSV, one row per subject (default: participants.csv "
        "in the folder)",
    )
    add.add_argument(
        "--index-col",
        help="medical-folder: the demographics column of subject ids (default: first)",
    )
    add.add_argument("--description", default="", help="free text shown to the operator")
    _add_json(add)
    add.set_defaults(func=cmd_dataset_add)
    listing = dataset_commands.add_parser("list", help="list registered datasets")
    _add_json(listing)
    listing.set_defaults(func=cmd_dataset_list)
    show = dataset_commands.add_parser("show", help="show one dataset")
    show.add_argument("name")
    _add_json(show)
    show.set_defaults(func=cmd_dataset_show)
    remove = dataset_commands.add_parser("remove", help="unregister a dataset (files are kept)")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_dataset_remove)
    budget = dataset_commands.add_parser(
        "budget", help="set a dataset's privacy budget (ε at δ) that DP tasks may spend"
    )
    budget.add_argument("name")
    budget.add_argument("--epsilon", type=float, help="total ε the scope may spend, e.g. 3")
    budget.add_argument("--delta", type=float, help="δ the ε is stated at, e.g. 1e-5")
    budget.add_argument(
        "--per",
        choices=("experiment", "researcher"),
        default="experiment",
        help="who shares the budget: each experiment, or all of a researcher's (default: experiment)",
    )
    budget.add_argument("--remove", action="store_true", help="remove the dataset's budget")
    budget.set_defaults(func=cmd_dataset_budget)
    update = dataset_commands.add_parser(
        "update", help="accept a dataset's changed content (after `verify` says CHANGED)"
    )
    update.add_argument("name")
    _add_json(update)
    update.set_defaults(func=cmd_dataset_update)
    cohort = dataset_commands.add_parser(
        "min-cohort", help="show or set the minimum cohort size for cohort statistics (default 10)"
    )
    cohort.add_argument("name")
    cohort.add_argument("size", nargs="?", type=int, default=None, metavar="N", help="new minimum")
    _add_json(cohort)
    cohort.set_defaults(func=cmd_dataset_min_cohort)
    check = dataset_commands.add_parser(
        "verify", help="re-hash datasets; exit 1 if any changed since registration"
    )
    check.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: all)")
    _add_json(check)
    check.set_defaults(func=cmd_dataset_verify)

    plan = commands.add_parser("plan", help="review and approve training plans")
    plan_commands = plan.add_subparsers(dest="plan_command", required=True, metavar="ACTION")
    plan_list = plan_commands.add_parser("list", help="list plans seen by this node")
    plan_list.add_argument("--status", choices=("pending", "approved", "rejected"))
    _add_json(plan_list)
    plan_list.set_defaults(func=cmd_plan_list)
    plan_show = plan_commands.add_parser("show", help="print a plan and its source")
    plan_show.add_argument("id", help="plan id (12 hex digits) or a longer hash prefix")
    _add_json(plan_show)
    plan_show.set_defaults(func=cmd_plan_show)
    for action, func, text in (
        ("approve", cmd_plan_approve, "allow a plan to run on this node"),
        ("reject", cmd_plan_reject, "forbid a plan on this node"),
    ):
        decide = plan_commands.add_parser(action, help=text)
        decide.add_argument("id", help="plan id (12 hex digits) or a longer hash prefix")
        decide.add_argument(
            "--reason",
            default="",
            help="why (kept in the audit trail; a rejection's reason is told to the researcher)",
        )
        decide.set_defaults(func=func)

    containment = commands.add_parser(
        "containment",
        help="show how training plans are confined on this machine; exit 1 if not fully",
    )
    _add_json(containment)
    containment.set_defaults(func=cmd_containment)

    start = commands.add_parser("start", help="connect to the researcher and serve tasks")
    start.add_argument("--researcher", metavar="HOST:PORT", help="default: from config.toml")
    start.add_argument(
        "--allow-unapproved",
        action="store_true",
        help="run plans without operator approval (tests and demos only)",
    )
    start.add_argument("--insecure", action="store_true", help="plain-text channel (no TLS)")
    start.add_argument("--ca", metavar="FILE", help="CA certificate of the researcher's server")
    start.add_argument("--cert", metavar="FILE", help="this node's client certificate")
    start.add_argument("--key", metavar="FILE", help="private key of --cert")
    start.add_argument(
        "--task-timeout", type=float, metavar="SECONDS", help="abort a task running longer"
    )
    start.add_argument(
        "--max-memory-mb",
        type=int,
        metavar="MB",
        help="memory a training task may use, 0 for no limit (default: [containment] "
        f"max_memory_mb in config.toml, else {DEFAULT_MEMORY_FRACTION:.0%} of this machine's RAM)",
    )
    start.add_argument(
        "--confinement",
        choices=CONFINEMENT_MODES,
        help="confine plans' writes and network: 'auto' where the kernel allows (default), "
        "'require' to refuse to start otherwise, 'off' not at all",
    )
    start.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads a training task's torch and BLAS may use, 0 for their default of one per "
        "CPU (default: [containment] threads in config.toml, else 0); lower it when the node "
        "shares its machine",
    )
    start.set_defaults(func=cmd_start)

    console = commands.add_parser("console", help="the operator's web console over this home")
    console.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only)",
    )
    console.add_argument("--port", type=int, default=8484, help="port (default: 8484)")
    console.add_argument(
        "--reset-password", action="store_true", help="replace the login secret, show it, and exit"
    )
    console.add_argument("--cert", metavar="FILE", help="TLS certificate (needed off loopback)")
    console.add_argument("--key", metavar="FILE", help="private key of --cert")
    console.set_defaults(func=cmd_console)
    return node


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``fedloom``-style arguments (``node ...``) and run the command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="fedloom")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
