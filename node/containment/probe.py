"""``python -m node.containment.probe OUTSIDE_DIR``: confine this process, report as JSON.

Run by `node.containment.support.probe_support`. It applies the confinement a training
process would, then checks that creating a file in OUTSIDE_DIR (a folder it was not
given) fails: Landlock counts as working only when that write is refused.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from node.containment.errors import ContainmentError
from node.containment.landlock import landlock_abi, restrict_self
from node.containment.network import leave_network
from node.containment.support import ContainmentSupport


def probe(outside: Path) -> ContainmentSupport:
    """Leave the network, restrict writes to a fresh folder, and try to write `outside`."""
    abi = landlock_abi()
    try:
        network, network_error = leave_network(), ""
    except ContainmentError as exc:
        network, network_error = "", str(exc)
    landlock_error = ""
    inside = Path(tempfile.mkdtemp(prefix="probe-", dir=outside))
    try:
        restrict_self([inside])
        (inside / "allowed").write_text("ok")
    except (ContainmentError, OSError) as exc:
        landlock_error = str(exc)
    else:
        try:
            (outside / "escaped").write_text("not confined")
            landlock_error = "Landlock was applied but a write outside the box succeeded"
        except PermissionError:
            pass
    return ContainmentSupport(abi, landlock_error, network, network_error)


if __name__ == "__main__":
    sys.stdout.write(json.dumps(asdict(probe(Path(sys.argv[1])))) + "\n")
