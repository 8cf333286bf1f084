"""Evaluate an alignment model on any image–caption source and on compositional probes.

- retrieval: I→T / T→I R@1/5/10 and mAP over every caption of the source, a caption being a
  positive of every image with its id (multi-positive: all of an image's captions count);
- compositional accuracy (ARO / SugarCrepe layout: image, caption, negative caption, kind):
  the image scores its caption above the negative, with the dual encoder's cosine and, when
  the model has a cross-modal head, with its ITM logit (``itm_comp_*``);
- re-ranked retrieval (``rerank_k > 0`` and a cross-modal head): each query's ``rerank_k`` best
  candidates re-ordered by the ITM logit (:mod:`hardneg.eval.rerank`), as ``*_rerank``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from hardneg.data.dataset import flatten_captions
from hardneg.eval.compositional import compositional_accuracy, compositional_trials
from hardneg.eval.rerank import rerank_evaluation
from hardneg.eval.retrieval import metrics_from_items, retrieval_items
from hardneg.eval.runner import SplitEvaluation
from hardneg.models.inputs import Images, Texts
from hardneg.models.outputs import ImageOutput

__all__ = ["evaluate_dataset", "evaluate_probes", "image_embeddings", "text_embeddings"]

Tokenize = Callable[[list[str]], Texts]


def image_embeddings(
    model,
    load: Callable[[int], Tensor],
    n: int,
    device,
    batch_size: int,
    progress: bool = False,
    keep: bool = False,
) -> tuple[Tensor, ImageOutput | None]:
    """Normalised embeddings of the ``n`` images, with the tower's outputs (on the CPU) when
    ``keep``."""
    out, outputs = [], []
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="embedding images", leave=False, disable=not progress):
        pixels = torch.stack([load(i) for i in range(start, min(n, start + batch_size))])
        emb, image = model.encode_images(Images(pixels=pixels.to(device)))
        out.append(F.normalize(emb.float(), dim=-1))
        if keep:
            outputs.append(image.to("cpu"))
    return torch.cat(out), ImageOutput.cat(outputs) if keep else None


def text_embeddings(
    model, tokenize: Tokenize, texts: list[str], device, batch_size: int, progress: bool = False
) -> Tensor:
    """Normalised embeddings ``(n, E)`` of ``texts``, tokenized and encoded in batches."""
    out = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="embedding captions", leave=False, disable=not progress):
        t = tokenize(texts[start : start + batch_size])
        emb, _ = model.encode_texts(t.to(device))
        out.append(F.normalize(emb.float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def evaluate_dataset(
    model: Any,
    dataset: Any,
    tokenize: Tokenize,
    device: torch.device | str = "cpu",
    probes: Any | None = None,
    batch_size: int = 64,
    progress: bool = False,
    rerank_k: int = 0,
) -> SplitEvaluation:
    """Multi-positive retrieval of ``model`` (an ``AlignmentModel``) on ``dataset`` (an
    ``ImageCaptionDataset``), plus :func:`evaluate_probes` on ``probes`` when given
    (``progress``: progress bars while embedding). With ``rerank_k > 0`` and a cross-modal
    head, also the retrieval re-ranked by its ITM logit (``*_rerank``; the image tower's
    outputs of every image are then kept on the CPU)."""
    was_training = model.training
    model.eval()
    rerank = rerank_k > 0 and model.crossmodal is not None
    u, images = image_embeddings(
        model, dataset.load_image, len(dataset), device, batch_size, progress, keep=rerank
    )
    flat = flatten_captions(dataset)
    v = text_embeddings(model, tokenize, flat.texts, device, batch_size, progress)
    image_ids = torch.as_tensor(np.asarray(dataset.semantic_ids, dtype=np.int64))
    text_ids = torch.as_tensor(flat.semantic_ids)

    def relevance(image_index: Tensor, text_index: Tensor) -> Tensor:
        rel = image_ids[image_index.cpu()][:, None] == text_ids[text_index.cpu()][None, :]
        return rel.to(image_index.device)

    items = retrieval_items(u, v, relevance)
    metrics = metrics_from_items(items)
    out = {k: t.cpu().numpy() for k, t in items.items()}
    if rerank:

        def itm(text_index: Tensor, image_index: Tensor) -> Tensor:
            texts = tokenize([flat.texts[i] for i in text_index.tolist()]).to(device)
            image = images.select(image_index.cpu()).to(device)
            return model.match(texts, image).itm_logit.float()

        reranked = rerank_evaluation(u, v, relevance, itm, rerank_k, batch_size=batch_size)
        metrics.update(reranked[0])
        out.update(reranked[1])
    if probes is not None:
        probe_eval = evaluate_probes(model, probes, tokenize, device, batch_size)
        metrics.update(probe_eval.metrics)
        out.update(probe_eval.items)
    model.train(was_training)
    return SplitEvaluation(metrics, out)


@torch.no_grad()
def evaluate_probes(
    model: Any, probes: Any, tokenize: Tokenize, device: torch.device | str, batch_size: int = 64
) -> SplitEvaluation:
    """Compositional accuracy per kind on ``probes`` (``load_image(i)``, ``captions``,
    ``negatives``, ``kinds``): ``comp_<kind>`` by cosine, ``itm_comp_<kind>`` by ITM."""
    u, _ = image_embeddings(model, probes.load_image, len(probes), device, batch_size)
    v_pos = text_embeddings(model, tokenize, list(probes.captions), device, batch_size)
    v_neg = text_embeddings(model, tokenize, list(probes.negatives), device, batch_size)
    kinds = list(probes.kinds)
    pos, neg = (u * v_pos).sum(-1), (u * v_neg).sum(-1)
    metrics = {f"comp_{k}": a for k, a in compositional_accuracy(pos, neg, kinds).items()}
    items: dict[str, np.ndarray] = {}
    items["comp_correct"], items["comp_kind"] = compositional_trials(pos, neg, kinds)
    if model.crossmodal is None:
        return SplitEvaluation(metrics, items)
    itm_pos, itm_neg = [], []
    for start in range(0, len(probes), batch_size):
        idx = range(start, min(len(probes), start + batch_size))
        pixels = torch.stack([probes.load_image(i) for i in idx]).to(device)
        _, image = model.encode_images(Images(pixels=pixels))
        for texts, into in ((probes.captions, itm_pos), (probes.negatives, itm_neg)):
            t = tokenize([texts[i] for i in idx])
            into.append(model.match(t.to(device), image).itm_logit)
    itm_pos_t, itm_neg_t = torch.cat(itm_pos).float(), torch.cat(itm_neg).float()
    acc = compositional_accuracy(itm_pos_t, itm_neg_t, kinds)
    metrics.update({f"itm_comp_{k}": a for k, a in acc.items()})
    items["itm_comp_correct"] = compositional_trials(itm_pos_t, itm_neg_t, kinds)[0]
    return SplitEvaluation(metrics, items)
