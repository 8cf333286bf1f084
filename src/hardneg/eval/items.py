r"""Per-item evaluation outcomes: one value per query or probe, whose mean is the metric.

:func:`~hardneg.eval.runner.evaluate_split_items` returns, for one split, the arrays below; a
run writes them to ``per_item.npz`` (keys ``"<split>/<item>"``) so that a bench can bootstrap
over test items (:mod:`hardneg.bench.statistics`). Every metric of the split is
``100 · mean(items)`` of the items :func:`metric_items` selects for it:

=====================  ==============================================================
items                  metric(s)
=====================  ==============================================================
``i2t_hit@K`` (N,)     ``i2t_R@K``: the best relevant caption of image i ranks ≤ K
``i2t_ap`` (N,)        ``i2t_mAP``: average precision of image i's ranking (in [0, 1])
``t2i_hit@K`` (M,)     ``t2i_R@K`` (one per caption query, full and partial captions)
``t2i_ap`` (M,)        ``t2i_mAP``
``<item>_rerank``      ``<metric>_rerank`` for the four above: retrieval re-ranked by the
                       cross-modal head (:mod:`hardneg.eval.rerank`), e.g. ``i2t_hit@1_rerank``
``comp_correct`` (P,)  ``comp_<kind>`` / ``comp_overall``: probe p's true caption beats its
                       hard negative (cosine); ``comp_kind`` (P,) names the kind
``itm_comp_correct``   ``itm_comp_<kind>`` / ``itm_comp_overall`` (cross-modal ITM head)
``ael_hit`` (A,)       ``ael``: share of probe a's top attention cells on the mismatch
=====================  ==============================================================
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hardneg.eval.rerank import RERANK_SUFFIX

__all__ = ["metric_items", "pack_items", "read_items"]

_DIRECT = {"ael": "ael_hit", "i2t_mAP": "i2t_ap", "t2i_mAP": "t2i_ap"}


def metric_items(items: dict[str, np.ndarray], metric: str) -> np.ndarray | None:
    """The per-item values (float64, in [0, 1]) whose mean ×100 is ``metric``.

    Args:
        items: one split's items (see the module table).
        metric: a metric name of :func:`~hardneg.eval.runner.evaluate_split`, e.g.
            ``"i2t_R@1"``, ``"i2t_mAP_rerank"``, ``"comp_swap_digits"``, ``"itm_comp_overall"``,
            ``"ael"``.

    Returns:
        the values, or None when ``metric`` has no per-item form (``rsum``) or its items are
        absent.

    Example:
        >>> items = {"comp_correct": np.array([1, 0, 1]), "comp_kind": np.array(["a", "b", "a"])}
        >>> metric_items(items, "comp_a").tolist(), metric_items(items, "comp_overall").tolist()
        ([1.0, 1.0], [1.0, 0.0, 1.0])
    """
    base = metric.removesuffix(RERANK_SUFFIX)  # re-ranked retrieval: the same items, suffixed
    name = _DIRECT.get(base)
    if name is None and base[:4] in ("i2t_", "t2i_") and "_R@" in base:
        name = base.replace("_R@", "_hit@")
    if name is not None:
        name += metric[len(base) :]
        return items[name].astype(np.float64) if name in items else None
    for prefix in ("itm_comp_", "comp_"):
        if metric.startswith(prefix):
            correct, kinds = items.get(f"{prefix}correct"), items.get("comp_kind")
            if correct is None or kinds is None:
                return None
            kind = metric.removeprefix(prefix)
            keep = np.ones(len(kinds), dtype=bool) if kind == "overall" else kinds == kind
            return correct[keep].astype(np.float64) if keep.any() else None
    return None


def pack_items(items_by_split: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Flatten ``{split: {item: array}}`` to the ``per_item.npz`` keys ``"<split>/<item>"``."""
    return {
        f"{split}/{k}": np.asarray(v)
        for split, items in items_by_split.items()
        for k, v in items.items()
    }


def read_items(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Read a ``per_item.npz`` back into ``{split: {item: array}}`` ({} if the file is absent)."""
    path = Path(path)
    if not path.is_file():
        return {}
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            split, _, name = key.partition("/")
            if not name:
                raise ValueError(f"{path}: key {key!r} is not '<split>/<item>'; rewrite the file")
            out.setdefault(split, {})[name] = data[key]
    return out
