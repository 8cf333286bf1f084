"""Evaluate a trained alignment model on a DigitScenes split with every hardneg metric.

- retrieval (dual encoder): I→T / T→I R@1/5/10 and mAP over the split's full *and* partial
  captions (the gallery for I→T, the queries for T→I); a caption is a positive of every
  scene its meaning is true of (``SplitTensors.relevance``), not only of the scene it was
  written for;
- compositional accuracy per perturbation: the image scores its true caption above each hard
  negative caption, with the dual encoder's cosine and with the cross-modal ITM head;
- AEL: for (image, hard-negative caption) pairs, % whose top last-layer cross-attention cell
  lies in the annotated mismatch words × mismatch region (BACL §5, "attention error
  localisation"). Only word tokens are ranked ([CLS]/[SEP]/padding are not);
- re-ranked retrieval (``rerank_k > 0`` and a cross-modal head): the same retrieval with each
  query's ``rerank_k`` best candidates re-ordered by the ITM logit (:mod:`hardneg.eval.rerank`),
  stored as ``i2t_R@1_rerank`` … ``rsum_rerank``.

:func:`evaluate_split_items` also returns the per-item outcomes (:mod:`hardneg.eval.items`)
whose means are the metrics, for bootstrap confidence intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.eval.compositional import compositional_accuracy, compositional_trials
from hardneg.eval.localisation import (
    attention_error_hits,
    box_to_patch_mask,
    word_span_to_token_mask,
)
from hardneg.eval.rerank import rerank_evaluation
from hardneg.eval.retrieval import metrics_from_items, retrieval_items
from hardneg.models.crossmodal import last_layer_attention
from hardneg.models.outputs import ImageOutput

__all__ = ["SplitEvaluation", "bank_text_embeddings", "evaluate_split", "evaluate_split_items"]


@dataclass
class SplitEvaluation:
    """The metrics of one split and the per-item outcomes they are the means of.

    Attributes:
        metrics: flat ``{metric: value}`` (see :func:`evaluate_split`).
        items: ``{item: (n,) array}`` (see :mod:`hardneg.eval.items`).
    """

    metrics: dict[str, float]
    items: dict[str, np.ndarray]


def evaluate_split(
    model: Any,
    bank: Any,
    split: Any,
    tower: Any,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    rerank_k: int = 0,
) -> dict[str, float]:
    """All metrics of ``model`` (an ``AlignmentModel``) on one ``SplitTensors``.

    Args:
        model: dual encoder + cross-modal transformer (``model.dual``, ``model.crossmodal``,
            ``model.crossmodal_text``: the head's view of captions).
        bank: the :class:`~hardneg.data.digitscenes.textbank.TextBank` holding the split's captions.
        split: :class:`~hardneg.data.digitscenes.tensors.SplitTensors`.
        tower: the text tower (its tokenizer maps words to tokens for AEL).
        device: where to run.
        batch_size: images per forward (and (caption, image) pairs per ITM forward).
        rerank_k: ITC candidates per query re-ranked by the ITM logit (0: no re-ranking; a
            model without a cross-modal head is not re-ranked).

    Returns:
        flat ``{metric: value}``: ``i2t_R@1`` … ``rsum``, ``comp_<kind>``/``comp_overall``
        (cosine), ``itm_comp_<kind>``/``itm_comp_overall``, ``ael``, and with re-ranking
        ``i2t_R@1_rerank`` … ``rsum_rerank``.
    """
    return evaluate_split_items(model, bank, split, tower, device, batch_size, rerank_k).metrics


@torch.no_grad()
def evaluate_split_items(
    model: Any,
    bank: Any,
    split: Any,
    tower: Any,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    rerank_k: int = 0,
) -> SplitEvaluation:
    """:func:`evaluate_split`'s metrics with their per-item outcomes (same arguments)."""
    was_training = model.training
    model.eval()
    try:
        return _evaluate(model, bank, split, tower, device, batch_size, rerank_k)
    finally:
        model.train(was_training)


def _evaluate(model, bank, split, tower, device, batch_size: int, rerank_k: int) -> SplitEvaluation:
    n = len(split)
    image_emb, image_outs = [], []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        emb, out = model.encode_images(split.images_of(idx, device))
        image_emb.append(F.normalize(emb.float(), dim=-1))
        image_outs.append(out)
    u = torch.cat(image_emb)
    images = ImageOutput.cat(image_outs)
    grid = images.grid

    metrics, items = _retrieval(model, bank, split, u, images, device, batch_size, rerank_k)

    # hard-negative probes: one row per (scene, hard negative)
    scene, neg_rows, kinds, spans, boxes, texts = [], [], [], [], [], []
    for i, negs in enumerate(split.scenes.hard_negatives):
        for h in negs:
            if h.caption in bank.index:
                scene.append(i)
                neg_rows.append(bank.index[h.caption])
                kinds.append(h.kind)
                spans.append(h.span)
                boxes.append(h.box)
                texts.append(h.caption)
    if not scene:
        metrics["ael"] = float("nan")
        return SplitEvaluation(metrics, items)
    scene_t = torch.tensor(scene)
    neg_t = torch.tensor(neg_rows)
    # a scene's ≤ 5 probes share its positive (caption 0): embed and score it once per scene
    probed, of_probe = torch.unique(scene_t, return_inverse=True)
    pos_rows = split.caption_rows[probed, 0]
    v_pos = bank_text_embeddings(model, bank, pos_rows, device, batch_size)[of_probe.to(device)]
    v_neg = bank_text_embeddings(model, bank, neg_t, device, batch_size)
    u_s = u[scene_t.to(u.device)]
    pos_cos, neg_cos = (u_s * v_pos).sum(-1), (u_s * v_neg).sum(-1)
    acc = compositional_accuracy(pos_cos, neg_cos, kinds)
    metrics.update({f"comp_{k}": val for k, val in acc.items()})
    items["comp_correct"], items["comp_kind"] = compositional_trials(pos_cos, neg_cos, kinds)

    itm_pos, itm_neg, attn = [], [], []
    for start in range(0, len(probed), batch_size):
        sl = slice(start, start + batch_size)
        img = images.select(probed[sl].to(images.tokens.device))
        out_pos = model.match(bank.take(pos_rows[sl], device), img)
        itm_pos.append(out_pos.itm_logit.float())
    for start in range(0, len(scene), batch_size):
        sl = slice(start, start + batch_size)
        img = images.select(scene_t[sl].to(images.tokens.device))
        out_neg = model.match(bank.take(neg_t[sl], device), img)
        itm_neg.append(out_neg.itm_logit.float())
        a = last_layer_attention(out_neg).float().cpu()  # (b, T_batch, P): pad T to the bank's
        attn.append(F.pad(a, (0, 0, 0, bank.tokens.shape[1] - a.shape[1])))
    itm_pos_t, itm_neg_t = torch.cat(itm_pos)[of_probe.to(device)], torch.cat(itm_neg)
    itm_acc = compositional_accuracy(itm_pos_t, itm_neg_t, kinds)
    metrics.update({f"itm_comp_{k}": val for k, val in itm_acc.items()})
    items["itm_comp_correct"] = compositional_trials(itm_pos_t, itm_neg_t, kinds)[0]
    hits = _ael_hits(torch.cat(attn), tower, texts, spans, boxes, bank, neg_t, split, grid)
    items["ael_hit"] = hits.numpy()
    metrics["ael"] = 100.0 * float(hits.mean()) if len(hits) else float("nan")
    return SplitEvaluation(metrics, items)


def _retrieval(
    model, bank, split, u: Tensor, images: ImageOutput, device, batch_size: int, rerank_k: int
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Retrieval metrics and items over every caption (full and partial) with exact relevance,
    and re-ranked by the ITM head when ``rerank_k`` > 0 and the model has one."""
    meanings = split.caption_meanings()  # (N, C + P), −1 = no caption
    rows = torch.cat([split.caption_rows, split.partial_rows], dim=1)
    present = meanings >= 0
    text_rows, text_meanings = rows[present], meanings[present]
    v = bank_text_embeddings(model, bank, text_rows, device, batch_size)

    def relevance(image_index: Tensor, text_index: Tensor) -> Tensor:
        rel = split.relevance(image_index.cpu(), text_meanings[text_index.cpu()])
        return rel.to(image_index.device)

    retrieval = retrieval_items(u, v, relevance)
    metrics = metrics_from_items(retrieval)
    items = {k: t.cpu().numpy() for k, t in retrieval.items()}
    if rerank_k > 0 and model.crossmodal is not None:

        def itm(text_index: Tensor, image_index: Tensor) -> Tensor:
            text = bank.take(text_rows[text_index.cpu()], device)
            image = images.select(image_index.to(images.tokens.device))
            return model.match(text, image).itm_logit.float()

        reranked = rerank_evaluation(u, v, relevance, itm, rerank_k, batch_size=batch_size)
        metrics.update(reranked[0])
        items.update(reranked[1])
    return metrics, items


def bank_text_embeddings(model, bank, rows: Tensor, device, batch_size: int) -> Tensor:
    """Normalised embeddings ``(n, E)`` of the text-bank ``rows`` (chunks of 4 × ``batch_size``)."""
    out = []
    for start in range(0, len(rows), 4 * batch_size):
        text = bank.take(rows[start : start + 4 * batch_size], device)
        out.append(F.normalize(model.dual.embed_text(text).float(), dim=-1))
    return torch.cat(out)


def _ael_hits(attn, tower, texts, spans, boxes, bank, rows, split, grid) -> Tensor:
    """Per-probe AEL hits (probes whose mismatch words survived truncation): mismatch words →
    tokens (tokenizer word ids), box → patches."""
    n_tokens = attn.shape[1]
    token_mask = torch.zeros(len(texts), n_tokens, dtype=torch.bool)
    valid = torch.zeros(len(texts), n_tokens, dtype=torch.bool)
    for p, (ids, span) in enumerate(zip(tower.word_ids(texts), spans)):
        ids = list(ids[:n_tokens]) + [None] * max(0, n_tokens - len(ids))
        valid[p] = torch.tensor([w is not None for w in ids])
        if max((w for w in ids if w is not None), default=-1) >= span[1] - 1:
            token_mask[p] = word_span_to_token_mask(ids, tuple(span))
    valid &= bank.mask[rows]
    kept = token_mask.any(dim=1)  # probes whose mismatch words survived truncation
    if not bool(kept.any()):
        return torch.zeros(0, dtype=torch.float64)
    image_size = int(split.images.shape[-1])
    patch_mask = torch.stack([box_to_patch_mask(b, image_size, grid) for b in boxes])
    return attention_error_hits(
        attn[kept], token_mask[kept], patch_mask[kept], valid_tokens=valid[kept]
    ).cpu()
