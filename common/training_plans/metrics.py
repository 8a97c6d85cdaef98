"""Built-in validation metrics when a plan defines no `testing_step`."""

from __future__ import annotations

import numpy as np

__all__ = ["classification_or_regression_metrics"]


def classification_or_regression_metrics(
    output: np.ndarray, target: np.ndarray | None
) -> dict[str, float]:
    """Accuracy and macro F1 for integer targets, MSE and MAE for real-valued ones."""
    if target is None:
        return {}
    target = np.asarray(target)
    output = np.asarray(output)
    if target.dtype.kind in "iub" or np.all(np.mod(target, 1) == 0):
        if output.ndim == 2 and output.shape[1] > 1:
            pred = output.argmax(axis=1)
        else:
            flat = output.reshape(len(output), -1)[:, 0]
            pred = (flat > (0.0 if flat.min() < 0 or flat.max() > 1 else 0.5)).astype(int)
        truth = target.reshape(len(target)).astype(int)
        classes = np.union1d(truth, pred)
        f1s = []
        for c in classes:
            tp = np.sum((pred == c) & (truth == c))
            fp = np.sum((pred == c) & (truth != c))
            fn = np.sum((pred != c) & (truth == c))
            f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
        return {"accuracy": float(np.mean(pred == truth)), "f1": float(np.mean(f1s))}
    pred = output.reshape(target.shape)
    return {
        "mse": float(np.mean((pred - target) ** 2)),
        "mae": float(np.mean(np.abs(pred - target))),
    }
