"""Classification scores shared by the k-NN and linear-probe evaluations."""

from __future__ import annotations

import numpy as np


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``accuracy``, ``balanced_accuracy`` (mean per-class recall over the classes present in
    ``y_true``) and ``macro_f1`` (over the classes present in ``y_true`` or ``y_pred``).

    Example:
        >>> classification_scores(np.array([0, 0, 1]), np.array([0, 1, 1]))["accuracy"]
        0.6666666666666666
    """
    from sklearn.metrics import balanced_accuracy_score, f1_score

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    return {
        "accuracy": float(np.mean(y_true == y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
