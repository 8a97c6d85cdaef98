"""The researcher: experiments, the round engine and the gRPC server nodes connect to."""

# First: `common` defers declearn's dataset examples, which would import torch into a
# researcher that only aggregates (see common/lazy_imports.py).
import common as _common  # noqa: F401
