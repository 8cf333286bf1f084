r"""Multi-positive retrieval evaluator for ``SentenceTransformerTrainer``.

:class:`RetrievalEvaluator` encodes queries and a corpus with the model and scores them with
hardneg's exact chunked :func:`hardneg.eval.retrieval.retrieval_metrics` (R@K and mAP over the
full ranking, several positives per query through semantic ids, pessimistic ties), in both
directions. No metric math lives here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

from hardneg.eval.retrieval import retrieval_metrics


class RetrievalEvaluator(SentenceEvaluator):
    r"""R@K / mAP of queries → corpus (``i2t``) and corpus → queries (``t2i``), in percent.

    The positives of query ``i`` are the corpus texts with ``corpus_ids == query_ids[i]``
    (several per query allowed), and symmetrically. Embeddings are L2-normalised, so scores
    are cosines.

    Args:
        queries: query texts (hardneg's "images"; the anchors).
        corpus: corpus texts (the positives; may hold several per query).
        query_ids, corpus_ids: integer semantic ids; None means ``range(len(...))`` (then
            ``corpus`` must be as long as ``queries``: text ``i`` is the positive of query ``i``).
        ks: recall cut-offs.
        batch_size: encoding batch size.
        chunk_size: block size of the exact chunked search.
        name: prefix of the metric names (``{name}_i2t_R@1``, ...).
        primary_metric: metric used for ``load_best_model_at_end`` (default ``"rsum"``).

    Example:
        ::

            evaluator = RetrievalEvaluator(anchors, positives, name="dev")
            trainer = SentenceTransformerTrainer(..., evaluator=evaluator)
    """

    def __init__(
        self,
        queries: Sequence[str],
        corpus: Sequence[str],
        query_ids: Sequence[int] | None = None,
        corpus_ids: Sequence[int] | None = None,
        ks: Sequence[int] = (1, 5, 10),
        batch_size: int = 32,
        chunk_size: int = 1024,
        name: str = "",
        primary_metric: str = "rsum",
    ) -> None:
        super().__init__()
        if not queries or not corpus:
            raise ValueError("queries and corpus must be non-empty lists of texts")
        if (query_ids is None) != (corpus_ids is None):
            raise ValueError("pass query_ids and corpus_ids together (or neither)")
        if query_ids is None and len(queries) != len(corpus):
            raise ValueError(
                f"without ids corpus[i] is the positive of queries[i], but there are "
                f"{len(queries)} queries and {len(corpus)} corpus texts; pass query_ids/corpus_ids"
            )
        self.queries, self.corpus = list(queries), list(corpus)
        self.query_ids = list(range(len(queries))) if query_ids is None else list(query_ids)
        self.corpus_ids = list(range(len(corpus))) if corpus_ids is None else list(corpus_ids)
        self.ks = tuple(ks)
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.name = name
        self.primary_metric = primary_metric

    def embed(self, model: SentenceTransformer, texts: list[str]) -> torch.Tensor:
        """(N, d) unit-norm float embeddings of ``texts``."""
        return model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        ).float()

    def __call__(
        self,
        model: SentenceTransformer,
        output_path: str | None = None,
        epoch: int = -1,
        steps: int = -1,
    ) -> dict[str, float]:
        """Metrics of ``model`` (``output_path``/``epoch``/``steps`` are not used)."""
        metrics = retrieval_metrics(
            self.embed(model, self.queries),
            self.embed(model, self.corpus),
            self.query_ids,
            self.corpus_ids,
            self.ks,
            self.chunk_size,
        )
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def get_config_dict(self) -> dict[str, Any]:
        """Configuration shown in the model card."""
        return {"ks": list(self.ks)}
