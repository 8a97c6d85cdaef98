"""The fedloom error hierarchy: every message says what went wrong and what to do next."""

from __future__ import annotations

__all__ = [
    "AnalyticsError",
    "AuthenticationError",
    "ConfigurationError",
    "DatasetError",
    "FedloomError",
    "NoMatchingNodesError",
    "NodeHomeError",
    "PayloadError",
    "PlanError",
    "ProtocolVersionError",
    "RoundFailedError",
    "SecaggError",
]


class FedloomError(Exception):
    """Base class of every error fedloom raises on purpose."""


class ConfigurationError(FedloomError):
    """An experiment, optimizer or node setting is invalid or inconsistent."""


class ProtocolVersionError(FedloomError):
    """A peer speaks another version of the wire protocol."""


class PayloadError(FedloomError):
    """A payload (parameters, aux vars, masked vectors) is malformed, truncated or too large."""


class DatasetError(FedloomError):
    """A dataset cannot be registered, found or loaded.

    ``field`` names the registration input the problem concerns (``name``, ``tags``,
    ``path``, ``type`` or ``target``) when there is one, so a form can show the message
    next to it; the message itself is the same wherever it is shown.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NodeHomeError(FedloomError):
    """A node home directory is missing, incomplete or already initialised."""


class PlanError(FedloomError):
    """A training plan is invalid or failed while running."""


class AuthenticationError(FedloomError):
    """A peer could not prove its identity, or claimed another's."""


class NoMatchingNodesError(FedloomError):
    """No connected node holds a dataset with the requested tags."""


class RoundFailedError(FedloomError):
    """Too few nodes answered a round for it to be aggregated."""


class SecaggError(FedloomError):
    """Secure aggregation cannot proceed: key, range, overflow or payload problem."""


class AnalyticsError(FedloomError):
    """A cohort-statistics query is invalid, or a node cannot or will not answer it."""
