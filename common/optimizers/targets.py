"""What a declearn Optimizer updates: the small part of declearn's `Model` API it touches.

`declearn.optimizer.Optimizer.apply_gradients(model, gradients)` only calls
`model.get_weights(trainable=True)` (for regularizers and weight decay) and
`model.apply_updates(updates)`. Implementing those two methods lets fedloom drive declearn's
own update path on a raw torch module or on a dict of numpy arrays, without wrapping the
model in a full declearn `Model` (which would need a loss, data handling and device moves).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
from declearn.model.api import Vector
from declearn.model.sklearn import NumpyVector

from common.errors import PayloadError

__all__ = ["NumpyTarget", "UpdateTarget", "check_same_keys"]


@runtime_checkable
class UpdateTarget(Protocol):
    """Weights a declearn Optimizer can read and update."""

    def get_weights(self, trainable: bool = False) -> Vector[Any]:
        """Return a copy of the trainable weights (the ones the gradients cover)."""
        ...

    def apply_updates(self, updates: Vector[Any]) -> None:
        """Add `updates` to the weights."""
        ...


def check_same_keys(expected: Any, received: Any, what: str) -> None:
    """Raise PayloadError naming the missing and unexpected names between two key sets."""
    missing = sorted(set(expected) - set(received))
    extra = sorted(set(received) - set(expected))
    if missing or extra:
        raise PayloadError(
            f"{what} do not match the model's parameters: missing {missing}, unexpected {extra}"
        )


class NumpyTarget:
    """A dict of numpy arrays updated by a declearn Optimizer; updates keep each array's dtype."""

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        """Wrap `weights` (not copied: updates rebind new arrays, never write in place)."""
        self._weights = {key: np.asarray(value) for key, value in weights.items()}

    @property
    def weights(self) -> dict[str, np.ndarray]:
        """The current weights."""
        return dict(self._weights)

    def get_weights(self, trainable: bool = False) -> NumpyVector:
        """Return the weights as a NumpyVector (all of them are trainable)."""
        return NumpyVector(dict(self._weights))

    def apply_updates(self, updates: Vector[Any]) -> None:
        """Add `updates` to the weights, casting the result back to each weight's dtype."""
        if not isinstance(updates, NumpyVector):
            raise PayloadError(
                f"numpy weights need NumpyVector updates, got {type(updates).__name__}"
            )
        check_same_keys(self._weights, updates.coefs, "updates")
        for key, update in updates.coefs.items():
            weight = self._weights[key]
            self._weights[key] = np.add(weight, update).astype(weight.dtype, copy=False)
