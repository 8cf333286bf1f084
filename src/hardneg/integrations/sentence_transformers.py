r"""hardneg's contrastive losses as sentence-transformers losses.

Drop-in siblings of ``sentence_transformers.losses.MultipleNegativesRankingLoss``: the same
``__init__(model, scale=20.0, ...)``, ``forward(sentence_features, labels) -> Tensor``,
``get_config_dict()`` and ``citation``, so they plug into ``SentenceTransformerTrainer``
unchanged. The loss math is hardneg's own (:mod:`hardneg.losses`), instantiated with a fixed
temperature ``τ = 1/scale``:

- :class:`InfoNCERankingLoss` (CLIP/InfoNCE), :class:`EGARankingLoss` (explicit gradient
  amplifier), :class:`HCLRankingLoss` / :class:`DCLRankingLoss` (hard / debiased negatives),
  :class:`SoftInfoNCERankingLoss`;
- :class:`HardnegRankingLoss` wraps any other :class:`~hardneg.losses.ContrastiveLoss`;
- every one takes ``bns=BNSConfig(k=...)`` to score only BACL-selected negatives.

Mapping of the columns (hardneg calls anchors "images" and positives "captions"): column 0 =
anchors, column 1 = positives, columns 2.. = hard negatives of each anchor, which become extra
candidates of the anchors (hardneg's ``extra_text_emb``).

Directions — these losses are **symmetric by default**, unlike ``MultipleNegativesRankingLoss``:
with ``directions=("query_to_doc", "doc_to_query")`` (default) the anchor→candidates term (with
the hard negatives) is averaged with a positive→anchors term, as ``MultipleNegativesRankingLoss(
directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")``; with
``directions=("query_to_doc",)`` only the anchor→candidates term is kept, as MNRL's default.
For :class:`InfoNCERankingLoss` both equalities are tested.

Each loss has ``compute_loss_from_embeddings(embeddings, labels)`` (as MNRL), so wrappers that
compute the embeddings themselves (e.g. ``MatryoshkaLoss``) can nest it. With
``bns=BNSConfig(...)`` add ``BNSProgressCallback(loss.miner)`` to the trainer: it drives the
curriculum, steps the policy once per optimiser step and stores the miner in the checkpoints;
evaluation scores every negative (deterministic), and a short last batch gets ``k`` clipped
with a logged warning.
"""

from __future__ import annotations

from typing import Any

from sentence_transformers import SentenceTransformer

from hardneg.integrations.ranking_loss import (
    QUERY_TO_DOC,
    SYMMETRIC,
    SYMMETRIC_ONLY,
    HardnegRankingLoss,
    fixed_temperature,
)
from hardneg.losses import DCLLoss, EGALoss, HCLLoss, InfoNCELoss, SoftInfoNCELoss
from hardneg.miners import BNSConfig

__all__ = [
    "QUERY_TO_DOC",
    "SYMMETRIC",
    "SYMMETRIC_ONLY",
    "DCLRankingLoss",
    "EGARankingLoss",
    "HCLRankingLoss",
    "HardnegRankingLoss",
    "InfoNCERankingLoss",
    "SoftInfoNCERankingLoss",
    "fixed_temperature",
]


class InfoNCERankingLoss(HardnegRankingLoss):
    r"""Symmetric InfoNCE (CLIP) with in-batch and hard negatives (hardneg ``InfoNCELoss``).

    .. math::
        \mathcal L = \tfrac12\big(\tfrac1B\textstyle\sum_i \ell(a_i \to \{p_j\} \cup \{n\})
        + \tfrac1B\sum_j \ell(p_j \to \{a_i\})\big),\quad
        \ell = -\log\frac{e^{s^+/\tau}}{\sum_c e^{s_c/\tau}},\quad \tau = 1/\text{scale}

    Args:
        model: the ``SentenceTransformer`` to train.
        scale: ``1/τ`` (20 means τ = 0.05), fixed.
        bns, labels_as_ids, directions: see :class:`HardnegRankingLoss`.

    Inputs: as :class:`HardnegRankingLoss`.

    Relations:
        Equal to ``MultipleNegativesRankingLoss(model, scale, directions=("query_to_doc",
        "doc_to_query"), partition_mode="per_direction")``; :class:`EGARankingLoss` has the same
        value and amplified hard-negative gradients.

    Example:
        ::

            loss = InfoNCERankingLoss(model, scale=20.0)
            trainer = SentenceTransformerTrainer(model=model, train_dataset=ds, loss=loss)
    """

    def __init__(
        self,
        model: SentenceTransformer,
        scale: float = 20.0,
        bns: BNSConfig | None = None,
        labels_as_ids: bool = False,
        directions: tuple[str, ...] = SYMMETRIC,
    ) -> None:
        loss = InfoNCELoss(**fixed_temperature(scale))
        super().__init__(model, loss, bns, labels_as_ids, directions)


class EGARankingLoss(HardnegRankingLoss):
    r"""InfoNCE value, hard-negative gradients amplified by ``1 + α·h`` (hardneg ``EGALoss``).

    EGA (arXiv:2506.02020, §3): the softmax probability ``P_in`` of a negative ``n`` of anchor
    ``i`` is reweighted by ``1 + α h_in``, with the detached hardness
    ``h_in = min(1, exp((s_in − s⁺_i)/τ_h))``; the loss value stays InfoNCE's. Renormalised
    form: ``∂ℓ/∂z_i = P̄_i − y_i`` with ``P̄_in ∝ (1 + α h_in) e^{z_in}`` normalised over the row
    (positives weight 1), the gradient of
    ``−log(e^{z⁺} / (e^{z⁺} + Σ_n sg(1 + α h_n) e^{z_n}))``; literal form: ``∂ℓ/∂z_in =
    P_in (1 + α h_in)``, whose rows do not sum to 0 (documented as unstable from scratch).

    Args:
        model: the ``SentenceTransformer`` to train.
        scale: ``1/τ`` (fixed).
        alpha: amplification α ≥ 0 (0 is InfoNCE).
        hardness_temperature: τ_h; None uses τ = 1/scale.
        renormalize: EGA's form (see :class:`~hardneg.losses.EGALoss`): True renormalises the
            amplified probabilities over each row (a prediction-minus-target gradient),
            False is the literal form; None (default) takes ``EGALoss``'s default.
        bns, labels_as_ids, directions: see :class:`HardnegRankingLoss`.

    Inputs: as :class:`HardnegRankingLoss`.

    Relations:
        Use it with (anchor, positive, negative) triplets: mined hard negatives are the ones
        whose gradient EGA amplifies. ``alpha=0`` is :class:`InfoNCERankingLoss`.

    Example:
        ::

            loss = EGARankingLoss(model, scale=20.0, alpha=1.0)
            trainer = SentenceTransformerTrainer(model=model, train_dataset=ds, loss=loss)
    """

    def __init__(
        self,
        model: SentenceTransformer,
        scale: float = 20.0,
        alpha: float = 1.0,
        hardness_temperature: float | None = None,
        renormalize: bool | None = None,
        bns: BNSConfig | None = None,
        labels_as_ids: bool = False,
        directions: tuple[str, ...] = SYMMETRIC,
    ) -> None:
        options = {} if renormalize is None else {"renormalize": renormalize}
        loss = EGALoss(alpha, hardness_temperature, **options, **fixed_temperature(scale))
        super().__init__(model, loss, bns, labels_as_ids, directions)

    def loss_config(self) -> dict[str, Any]:
        loss = self.criterion.loss
        return {
            "alpha": loss.alpha,
            "hardness_temperature": loss.hardness_temperature,
            "renormalize": loss.renormalize,
        }


class HCLRankingLoss(HardnegRankingLoss):
    r"""Hard-negative contrastive loss (Robinson et al. 2021, Eq. 5; hardneg ``HCLLoss``).

    Negatives are importance-weighted by ``e^{β s/τ}`` and debiased with the class prior τ⁺:
    ``ℓ = −log(pos / (pos + N_g))``, ``N_g = max((−τ⁺ N pos + reweight)/(1 − τ⁺), N e^{−1/τ})``.

    Args:
        model: the ``SentenceTransformer`` to train.
        scale: ``1/τ`` (fixed; the references use τ = 0.5 for SimCLR).
        beta: concentration β of the hard-negative weighting (0 is :class:`DCLRankingLoss`).
        tau_plus: class prior τ⁺ ∈ [0, 1) of false negatives.
        bns, labels_as_ids, directions: see :class:`HardnegRankingLoss`.

    Inputs: as :class:`HardnegRankingLoss`.

    Example:
        ::

            loss = HCLRankingLoss(model, scale=20.0, beta=1.0, tau_plus=0.1)
    """

    def __init__(
        self,
        model: SentenceTransformer,
        scale: float = 20.0,
        beta: float = 1.0,
        tau_plus: float = 0.1,
        bns: BNSConfig | None = None,
        labels_as_ids: bool = False,
        directions: tuple[str, ...] = SYMMETRIC,
    ) -> None:
        loss = HCLLoss(beta, tau_plus, **fixed_temperature(scale))
        super().__init__(model, loss, bns, labels_as_ids, directions)

    def loss_config(self) -> dict[str, Any]:
        return {"beta": self.criterion.loss.beta, "tau_plus": self.criterion.loss.tau_plus}


class DCLRankingLoss(HardnegRankingLoss):
    r"""Debiased contrastive loss (Chuang et al. 2020, Eq. 6; hardneg ``DCLLoss``).

    :class:`HCLRankingLoss` with ``β = 0``: the negative term is corrected for the expected
    share τ⁺ of false negatives among the in-batch negatives.

    Args:
        model: the ``SentenceTransformer`` to train.
        scale: ``1/τ`` (fixed).
        tau_plus: class prior τ⁺ ∈ [0, 1) of false negatives.
        bns, labels_as_ids, directions: see :class:`HardnegRankingLoss`.

    Inputs: as :class:`HardnegRankingLoss`.

    Example:
        ::

            loss = DCLRankingLoss(model, scale=20.0, tau_plus=0.1)
    """

    def __init__(
        self,
        model: SentenceTransformer,
        scale: float = 20.0,
        tau_plus: float = 0.1,
        bns: BNSConfig | None = None,
        labels_as_ids: bool = False,
        directions: tuple[str, ...] = SYMMETRIC,
    ) -> None:
        loss = DCLLoss(tau_plus, **fixed_temperature(scale))
        super().__init__(model, loss, bns, labels_as_ids, directions)

    def loss_config(self) -> dict[str, Any]:
        return {"tau_plus": self.criterion.loss.tau_plus}


class SoftInfoNCERankingLoss(HardnegRankingLoss):
    r"""Soft-InfoNCE (Li et al. 2023, §3; hardneg ``SoftInfoNCELoss``).

    ``ℓ = −log e^{z⁺} / (e^{z⁺} + Σ_n w_n e^{z_n})`` with detached weights
    ``w_n = N·softmax_n(−s_n/τ_w)``: likely false negatives (very similar) are pushed less.

    Args:
        model: the ``SentenceTransformer`` to train.
        scale: ``1/τ`` (fixed).
        weight_temperature: τ_w of the weights (larger is closer to InfoNCE).
        bns, labels_as_ids: see :class:`HardnegRankingLoss` (symmetric only).

    Inputs: as :class:`HardnegRankingLoss`.

    Example:
        ::

            loss = SoftInfoNCERankingLoss(model, scale=20.0, weight_temperature=1.0)
    """

    def __init__(
        self,
        model: SentenceTransformer,
        scale: float = 20.0,
        weight_temperature: float = 1.0,
        bns: BNSConfig | None = None,
        labels_as_ids: bool = False,
    ) -> None:
        loss = SoftInfoNCELoss(weight_temperature, **fixed_temperature(scale))
        super().__init__(model, loss, bns, labels_as_ids)

    def loss_config(self) -> dict[str, Any]:
        return {"weight_temperature": self.criterion.loss.weight_temperature}
