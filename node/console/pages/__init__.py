"""One module per group of console pages, each exposing its ``routes``."""

from node.console.pages import audit, datasets, experiments, login, logs, plans, status

__all__ = ["audit", "datasets", "experiments", "login", "logs", "plans", "status"]
