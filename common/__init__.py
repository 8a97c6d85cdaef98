"""Code shared by the fedloom researcher and nodes: wire format, plans, optimizers, SecAgg."""

from common.lazy_imports import defer_declearn_examples

__version__ = "0.1.0"

# Before anything imports declearn: its dataset examples would pull torch into the researcher.
defer_declearn_examples()
