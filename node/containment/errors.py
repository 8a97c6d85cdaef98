"""The error a containment step raises when it cannot be applied."""

from __future__ import annotations

from common.errors import FedloomError

__all__ = ["ContainmentError"]


class ContainmentError(FedloomError):
    """A training process could not be confined as the node's settings require."""
