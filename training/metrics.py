"""Classification figures: accuracy, macro-F1, a per-class report and a confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_report(gold: Sequence[int], pred: Sequence[int], num_classes: int,
                          labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Rows of the confusion matrix are gold classes, columns predictions."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (np.asarray(gold), np.asarray(pred)), 1)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                   where=(precision + recall) > 0)
    names = list(labels) if labels is not None else [str(i) for i in range(num_classes)]
    return {
        "accuracy": float(tp.sum() / max(len(gold), 1)),
        "macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)},
        "confusion_matrix": {"labels": names, "rows_gold_cols_pred": confusion.tolist()},
        "examples": len(gold),
    }
