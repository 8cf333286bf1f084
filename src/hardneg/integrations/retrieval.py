r"""Multi-positive retrieval metrics for the HF ``Trainer`` (``compute_metrics``).

Thin adapter from ``transformers.EvalPrediction`` to hardneg's exact chunked
:func:`hardneg.eval.retrieval.retrieval_metrics` (image→text and text→image R@K and mAP over
the full ranking, pessimistic ties); no metric math lives here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hardneg.eval.retrieval import retrieval_metrics


def as_tensor(array: Any, name: str) -> Tensor:
    """A float/int tensor of a numpy array or tensor (the Trainer hands numpy arrays)."""
    if isinstance(array, Tensor):
        return array
    if isinstance(array, np.ndarray):
        return torch.from_numpy(array)
    raise ValueError(f"{name} must be a numpy array or tensor, got {type(array).__name__}")


class RetrievalMetrics:
    r"""``compute_metrics`` for ``HardnegCLIPTrainer``: R@K and mAP of the whole eval set.

    The Trainer gathers the ``(image_embeds, text_embeds)`` that
    :meth:`~hardneg.integrations.hf_trainer.HardnegCLIPTrainer.compute_loss` returns as
    outputs; row ``i`` of both is pair ``i``. With ``TrainingArguments(label_names=["labels"])``
    and an integer ``label`` column the labels are semantic ids (all captions with the id of an
    image are its positives, see :func:`~hardneg.eval.retrieval.retrieval_metrics`); without
    labels pair ``i`` is the only positive of row ``i``.

    Args:
        ks: recall cut-offs.
        chunk_size: block size of the exact chunked search (memory ``O(chunk_size²)``).

    Returns (from ``__call__``):
        ``{"i2t_R@1", ..., "t2i_mAP", "rsum"}`` in percent (the Trainer prefixes ``eval_``).

    Example:
        ::

            trainer = HardnegCLIPTrainer(..., compute_metrics=RetrievalMetrics(ks=(1, 5)),
                                         args=TrainingArguments(..., label_names=["labels"]))
    """

    def __init__(self, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 1024) -> None:
        self.ks = tuple(ks)
        self.chunk_size = chunk_size

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        predictions = eval_pred.predictions
        if not isinstance(predictions, (tuple, list)) or len(predictions) != 2:
            raise ValueError(
                "RetrievalMetrics needs (image_embeds, text_embeds) predictions, as "
                "HardnegCLIPTrainer returns them; do not set prediction_loss_only"
            )
        image = as_tensor(predictions[0], "image_embeds").float()
        text = as_tensor(predictions[1], "text_embeds").float()
        labels = eval_pred.label_ids
        if labels is None or (isinstance(labels, (tuple, list)) and not labels):
            ids = torch.arange(image.shape[0])  # no label column: pair i is row i's positive
        else:
            ids = as_tensor(labels, "label_ids").long().reshape(-1)
        return retrieval_metrics(image, text, ids, ids, self.ks, self.chunk_size)
