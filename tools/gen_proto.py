"""Regenerate the Python protobuf/gRPC modules in common/proto from proto/.

Usage: python tools/gen_proto.py [OUTPUT_DIR]   (default: common/proto)
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "common" / "proto"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every .proto file and make the grpc imports package-relative."""
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        # Typed stubs for the gRPC service (mypy-protobuf's plugin), so mypy --strict
        # checks our calls to the stub and servicer instead of seeing untyped code.
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    # protoc finds the mypy_grpc plugin on PATH; it sits beside this interpreter in a venv.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(out_dir.glob("*_pb2*.py*"))
    for path in written:
        text = path.read_text()
        # protoc writes `import x_pb2 as ...`, which only works from the output dir.
        fixed = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text, flags=re.M)
        path.write_text(fixed)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for p in generate(target):
        print(p.relative_to(target.parent) if target == DEFAULT_OUT else p)
