"""`fedloom certs`: issue the CA and certificates for mutual TLS (see common/tls.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from cryptography import x509

from common.errors import FedloomError
from common.tls import CertDirectory, add_node_cert, init_certs, node_id_from_pem

__all__ = ["register"]

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``certs`` command and its sub-commands to a CLI's sub-parsers."""
    certs = subparsers.add_parser(
        "certs",
        help="issue TLS certificates for the researcher and nodes",
        description="Issue a private CA, the researcher's server certificate and one client "
        "certificate per node. Give each node the folder OUT/nodes/<node_id>/.",
    )
    sub = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="create a CA, the researcher's and the nodes' certificates")
    init.add_argument("--out", required=True, type=Path, help="directory to write (mode 0700)")
    init.add_argument(
        "--researcher-host",
        action="append",
        default=[],
        metavar="HOST",
        help="DNS name or IP nodes use to reach the researcher; repeat for several "
        "(default: localhost and 127.0.0.1)",
    )
    init.add_argument(
        "--node", action="append", default=[], metavar="ID", help="node id; repeat for several"
    )
    init.add_argument(
        "--force", action="store_true", help="replace an existing CA and all its certificates"
    )
    init.set_defaults(func=_init)

    add = sub.add_parser("add-node", help="issue a certificate for one more node, same CA")
    add.add_argument("--out", required=True, type=Path, help="directory holding ca.pem/ca.key")
    add.add_argument(
        "--node", action="append", required=True, metavar="ID", help="node id; repeatable"
    )
    add.add_argument("--force", action="store_true", help="reissue an existing node certificate")
    add.set_defaults(func=_add_node)

    show = sub.add_parser("list", help="list the certificates in a directory")
    show.add_argument("--out", required=True, type=Path, help="certificate directory")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    show.set_defaults(func=_list)


def _init(args: argparse.Namespace) -> int:
    try:
        certs = init_certs(args.out, args.researcher_host, args.node, force=args.force)
    except FedloomError as exc:
        logger.error("%s", exc)
        return 1
    sys.stdout.write(
        f"wrote CA and researcher certificate to {certs.root}\n"
        + "".join(f"node {n}: {certs.node(n).cert.parent}/\n" for n in args.node)
        + f"keep {certs.ca_key} private; give each node only its nodes/<id>/ folder\n"
    )
    return 0


def _add_node(args: argparse.Namespace) -> int:
    try:
        for node_id in args.node:
            paths = add_node_cert(args.out, node_id, force=args.force)
            sys.stdout.write(f"node {node_id}: {paths.cert.parent}/\n")
    except FedloomError as exc:
        logger.error("%s", exc)
        return 1
    return 0


def _describe(path: Path) -> dict[str, Any]:
    pem = path.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(getattr(n, "value", n)) for n in san]
    except x509.ExtensionNotFound:
        names = []
    return {
        "file": str(path),
        "subject": cert.subject.rfc4514_string(),
        "san": names,
        "expires": cert.not_valid_after_utc.date().isoformat(),
    }


def _list(args: argparse.Namespace) -> int:
    certs = CertDirectory(args.out)
    if not certs.ca_cert.is_file():
        logger.error("no certificates in %s: run `fedloom certs init --out %s`", args.out, args.out)
        return 1
    rows: list[dict[str, Any]] = [{"role": "ca", **_describe(certs.ca_cert)}]
    if certs.server_cert.is_file():
        rows.append({"role": "researcher", **_describe(certs.server_cert)})
    for node_id in certs.node_ids():
        cert_path = certs.node(node_id).cert
        row = {"role": "node", **_describe(cert_path)}
        row["node_id"] = node_id_from_pem(cert_path.read_bytes())
        rows.append(row)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        for row in rows:
            sans = ", ".join(row["san"]) or "-"
            sys.stdout.write(f"{row['role']:<10} {row['subject']:<40} {sans}  {row['expires']}\n")
    return 0
