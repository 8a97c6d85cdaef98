"""The committed protobuf modules are exactly what proto/ generates today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generate(out: Path) -> list[Path]:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate(out)


def test_generated_protobuf_modules_are_up_to_date(tmp_path: Path) -> None:
    fresh = _generate(tmp_path)
    assert fresh, "tools/gen_proto.py generated nothing"
    committed = ROOT / "common" / "proto"
    for path in fresh:
        current = committed / path.name
        assert current.exists(), f"{current} is missing: run python tools/gen_proto.py"
        assert current.read_text() == path.read_text(), (
            f"{current.relative_to(ROOT)} is stale: run `python tools/gen_proto.py` and commit the result"
        )


def test_every_message_carrying_a_protocol_version_defaults_to_unset() -> None:
    from common.proto import fedloom_pb2 as pb

    for message in (
        pb.NodeMessage,
        pb.ResearcherMessage,
        pb.PayloadChunk,
        pb.DownloadRequest,
        pb.UploadAck,
    ):
        assert "protocol_version" in message.DESCRIPTOR.fields_by_name, message.__name__
