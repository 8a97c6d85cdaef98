"""Code shared by the fedloom researcher and nodes: wire format, plans, optimizers, SecAgg."""

__version__ = "0.1.0"
