"""``HardnegRankingLoss``: any hardneg loss with sentence-transformers' ranking-loss API.

The shared base of :mod:`hardneg.integrations.sentence_transformers` (see that module for the
column mapping, the directions and BNS).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from hardneg.integrations.citations import BACL_CITATION, CITATIONS
from hardneg.losses import ContrastiveLoss, SigLIPLoss, SoftInfoNCELoss
from hardneg.miners import BNSConfig, BoundaryAwareMiner, MinedLoss

#: ``directions`` accepted by the losses (MNRL's names); the first is MNRL's default.
QUERY_TO_DOC = ("query_to_doc",)
SYMMETRIC = ("query_to_doc", "doc_to_query")

#: Losses whose row without negatives is not a zero-gradient 0 (one direction unsupported).
SYMMETRIC_ONLY: tuple[type[ContrastiveLoss], ...] = (SigLIPLoss, SoftInfoNCELoss)


def fixed_temperature(scale: float) -> dict[str, Any]:
    """Keyword arguments of a hardneg loss with the fixed temperature ``τ = 1/scale``."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0 (it is 1/temperature; 20 means τ = 0.05), got {scale}")
    return {
        "temperature": 1.0 / scale,
        "learn_temperature": False,
        "max_logit_scale": max(100.0, float(scale)),
    }


class HardnegRankingLoss(nn.Module):
    r"""Any hardneg contrastive loss as a sentence-transformers loss.

    For a batch of ``B`` rows with anchor embeddings ``a_i``, positives ``p_i`` and optional
    hard negatives ``n_i^{(1..K)}``, the hardneg loss is called as
    ``loss(a, p, extra_text_emb=n)``: each anchor is scored against every positive of the batch
    and every hard negative of the batch (its own and the other rows'), each positive against
    every anchor, and the two directions are averaged. With ``bns`` only the positives and
    ``k`` negatives picked by BACL's boundary-aware sampler enter each denominator.

    Args:
        model: the ``SentenceTransformer`` to train.
        loss: a :class:`~hardneg.losses.ContrastiveLoss`; its temperature is used as is (a
            learnable one is trained by ``SentenceTransformerTrainer`` with the model).
        bns: optional :class:`~hardneg.miners.BNSConfig`: select ``bns.k`` negatives per
            anchor (``k ≤ batch_size − 1``). Add
            ``BNSProgressCallback(loss.miner)`` to the trainer's callbacks so that the
            curriculum follows the training progress.
        labels_as_ids: treat the dataset's ``label`` column as integer semantic ids: rows
            sharing a label are positives of each other, never negatives (duplicates).
        directions: ``("query_to_doc", "doc_to_query")`` (default, symmetric) or
            ``("query_to_doc",)`` (anchor → candidates only, MNRL's default). SigLIP and
            Soft-InfoNCE support only the symmetric form.

    References:
        - see :attr:`citation` (the wrapped loss; BACL when ``bns`` is set).

    Requirements:
        1. (anchor, positive) pairs or (anchor, positive, negative_1, ..., negative_n) tuples.

    Inputs:
        +-------------------------------------------------+-------------------------------+
        | Inputs                                          | Labels                        |
        +=================================================+===============================+
        | (anchor, positive) pairs                        | none (or int ids)             |
        +-------------------------------------------------+-------------------------------+
        | (anchor, positive, negative) triplets           | none (or int ids)             |
        +-------------------------------------------------+-------------------------------+
        | (anchor, positive, negative_1, ..., negative_n) | none (or int ids)             |
        +-------------------------------------------------+-------------------------------+

    Recommendations:
        - Use ``BatchSamplers.NO_DUPLICATES`` (or ``labels_as_ids``) so that no in-batch
          negative is a duplicate of the positive.

    Relations:
        - :class:`InfoNCERankingLoss` equals ``MultipleNegativesRankingLoss`` with
          ``directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"``, and
          with ``directions=("query_to_doc",)`` it equals MNRL's default.
        - Under ``torch.distributed`` the embeddings of all ranks are gathered (with gradient)
          as candidates, like ``gather_across_devices=True``.

    Example:
        ::

            from hardneg.losses import DecoupledInfoNCELoss
            from hardneg.integrations.sentence_transformers import HardnegRankingLoss

            loss = HardnegRankingLoss(
                model, DecoupledInfoNCELoss(temperature=0.05, learn_temperature=False)
            )
    """

    def __init__(
        self,
        model: SentenceTransformer,
        loss: ContrastiveLoss,
        bns: BNSConfig | None = None,
        labels_as_ids: bool = False,
        directions: tuple[str, ...] = SYMMETRIC,
    ) -> None:
        super().__init__()
        directions = tuple(directions)
        if directions not in (SYMMETRIC, QUERY_TO_DOC):
            raise ValueError(
                f"directions must be {SYMMETRIC} (symmetric) or {QUERY_TO_DOC} (MNRL's "
                f"default), got {directions}"
            )
        if directions == QUERY_TO_DOC and isinstance(loss, SYMMETRIC_ONLY):
            raise ValueError(
                f"{type(loss).__name__} has no one-directional form; use directions={SYMMETRIC}"
            )
        self.model = model
        miner = BoundaryAwareMiner(bns) if bns is not None else None
        self.criterion = MinedLoss(loss, miner)
        self.bns = bns
        self.labels_as_ids = labels_as_ids
        self.directions = directions

    @property
    def miner(self) -> BoundaryAwareMiner | None:
        """The BNS miner (None without ``bns``); give it to ``BNSProgressCallback``."""
        return self.criterion.miner

    @property
    def scale(self) -> float:
        """Current ``1/τ`` of the wrapped loss."""
        return float(self.criterion.loss.scale())

    @property
    def temperature(self) -> float:
        """Current temperature ``τ``."""
        return 1.0 / self.scale

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None
    ) -> Tensor:
        """Loss of one batch of (anchor, positive[, negatives...]) columns.

        Args:
            sentence_features: one tokenised feature dict per column.
            labels: the dataset's label column (used only with ``labels_as_ids``).
        """
        embeddings = [self.model(features)["sentence_embedding"] for features in sentence_features]
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(
        self, embeddings: list[Tensor], labels: Tensor | None
    ) -> Tensor:
        """Loss of already computed column embeddings (anchor, positive[, negatives...]).

        Args:
            embeddings: one (B, d) tensor per column.
            labels: the dataset's label column (used only with ``labels_as_ids``).
        """
        if len(embeddings) < 2:
            raise ValueError(
                f"{type(self).__name__} needs (anchor, positive[, negative...]) columns, got "
                f"{len(embeddings)} column(s); add a positive column to the dataset"
            )
        anchors, positives, negatives = embeddings[0], embeddings[1], embeddings[2:]
        extra = torch.stack(negatives, dim=1) if negatives else None  # (B, K, d)
        ids = None
        if self.labels_as_ids:
            if labels is None:
                raise ValueError(
                    "labels_as_ids=True but the batch has no labels; add an integer 'label' "
                    "column (semantic ids) to the dataset"
                )
            ids = labels
        return self.criterion(
            anchors,
            positives,
            positive_ids=ids,
            extra_text_emb=extra,
            image_to_text_only=self.directions == QUERY_TO_DOC,
        )

    def loss_config(self) -> dict[str, Any]:
        """Hyper-parameters of the wrapped loss for :meth:`get_config_dict`."""
        return {"loss": type(self.criterion.loss).__name__}

    def get_config_dict(self) -> dict[str, Any]:
        """Configuration shown in the model card (as sentence-transformers losses)."""
        return {
            "scale": self.scale,
            **self.loss_config(),
            "bns": None if self.bns is None else asdict(self.bns),
            "labels_as_ids": self.labels_as_ids,
            "directions": list(self.directions),
        }

    @property
    def citation(self) -> str:
        """BibTeX of the wrapped loss (and of BACL when negatives are selected by BNS)."""
        mro = type(self.criterion.loss).__mro__
        parts = [next((CITATIONS[cls] for cls in mro if cls in CITATIONS), "")]
        if self.miner is not None:
            parts.append(BACL_CITATION)
        return "".join(parts)
