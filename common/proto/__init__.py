"""Generated protobuf and gRPC modules (see proto/fedloom.proto and tools/gen_proto.py)."""

from . import fedloom_pb2, fedloom_pb2_grpc

__all__ = ["fedloom_pb2", "fedloom_pb2_grpc"]
