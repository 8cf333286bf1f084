"""Tests of hardneg.eval.rerank: ITC top-k re-ranked by a pair score, and where it is wired in.

The reference is a brute force written here: per query, a Python sort of every candidate by
the ITC score, its first k sorted again by the pair score, the rest appended, and R@K / AP read
off that list by hand. Scores are drawn from a continuous distribution in float64 (ties are
checked absent), relevance is random with several relevant items per query.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hardneg import cli
from hardneg.eval.datasets import evaluate_dataset
from hardneg.eval.items import metric_items
from hardneg.eval.rerank import rerank_items
from hardneg.eval.retrieval import metrics_from_items, retrieval_items
from hardneg.eval.runner import evaluate_split_items
from hardneg.models.inputs import Texts
from hardneg.models.outputs import ImageOutput
from hardneg.train.config import TrainConfig
from tests.helpers.split_stub import IMAGES, TEXTS, StubModel, stub_bank, stub_split, true_of

KS = (1, 5, 10)


def _problem(n_images: int, n_texts: int, seed: int):
    """One-hot images and captions whose inner products are exactly ``sim`` (N × M), an ITM
    score table ``itm`` (N × M) and a relevance with ≥ 1 relevant partner per row and column."""
    gen = torch.Generator().manual_seed(seed)
    sim = torch.rand(n_images, n_texts, generator=gen, dtype=torch.float64)
    itm = torch.randn(n_images, n_texts, generator=gen, dtype=torch.float64)
    rel = torch.rand(n_images, n_texts, generator=gen) < 0.3
    rel[torch.arange(n_texts) % n_images, torch.arange(n_texts)] = True
    for s in (sim, itm, sim + itm):  # no ties within any row or column
        assert len(set(s.flatten().tolist())) == s.numel()
    return torch.eye(n_images, dtype=torch.float64), sim.T.contiguous(), sim, itm, rel


def _brute_force(sim, itm, rel, k: int, combine: str):
    """Per row (query): hit@K for KS and AP of the re-ranked list, by hand."""
    hits, aps = [], []
    for s, c, r in zip(sim.tolist(), itm.tolist(), rel.tolist()):
        order = sorted(range(len(s)), key=s.__getitem__, reverse=True)
        pair = c if combine == "itm" else [ci + si for ci, si in zip(c, s)]
        ranked = sorted(order[:k], key=pair.__getitem__, reverse=True) + order[k:]
        ranks = [pos + 1 for pos, j in enumerate(ranked) if r[j]]
        hits.append([ranks[0] <= cut for cut in KS])
        aps.append(sum((m + 1) / rank for m, rank in enumerate(ranks)) / len(ranks))
    return hits, aps


def _relevance(rel):
    return lambda image_index, text_index: rel[image_index][:, text_index]


def _table_scorer(itm):
    return lambda text_rows, image_rows: itm[image_rows, text_rows]


@pytest.mark.parametrize("combine", ["itm", "itm+itc"])
@pytest.mark.parametrize("k", [1, 3, 8, 40])  # 40 > both galleries: clipped
def test_rerank_equals_a_brute_force_reranking(k, combine):
    image_emb, text_emb, sim, itm, rel = _problem(11, 23, seed=k)
    out = rerank_items(
        image_emb,
        text_emb,
        _relevance(rel),
        _table_scorer(itm),
        k=k,
        combine=combine,
        batch_size=7,
        chunk_size=4,
    )
    for name, s, c, r in (("i2t", sim, itm, rel), ("t2i", sim.T, itm.T, rel.T)):
        hits, aps = _brute_force(s, c, r, k, combine)
        for j, cut in enumerate(KS):
            assert out[f"{name}_hit@{cut}"].tolist() == [h[j] for h in hits], (name, cut)
        assert out[f"{name}_ap"].tolist() == pytest.approx(aps, abs=1e-12), name


def test_the_brute_force_sees_the_reranking():
    """The test above can fail: a re-ranking changes the outcomes of some queries."""
    image_emb, text_emb, _, itm, rel = _problem(11, 23, seed=3)
    itc = retrieval_items(image_emb, text_emb, _relevance(rel))
    out = rerank_items(image_emb, text_emb, _relevance(rel), _table_scorer(itm), k=8)
    assert not torch.equal(out["i2t_ap"], itc["i2t_ap"])
    assert not torch.equal(out["t2i_hit@1"], itc["t2i_hit@1"])


@pytest.mark.parametrize("combine", ["itm", "itm+itc"])
@pytest.mark.parametrize("k", [2, 16])
def test_scoring_pairs_by_the_itc_similarity_gives_the_itc_metrics(k, combine):
    gen = torch.Generator().manual_seed(5)
    image_emb = torch.nn.functional.normalize(torch.randn(17, 8, generator=gen), dim=1).double()
    text_emb = torch.nn.functional.normalize(torch.randn(29, 8, generator=gen), dim=1).double()
    _, _, _, _, rel = _problem(17, 29, seed=6)

    def cosine(text_rows, image_rows):
        return (image_emb[image_rows] * text_emb[text_rows]).sum(dim=1)

    out = rerank_items(image_emb, text_emb, _relevance(rel), cosine, k=k, combine=combine)
    itc = retrieval_items(image_emb, text_emb, _relevance(rel))
    assert metrics_from_items(out) == pytest.approx(metrics_from_items(itc), abs=1e-9)


def test_k1_keeps_the_itc_ranking():
    image_emb, text_emb, _, itm, rel = _problem(9, 20, seed=7)
    out = rerank_items(image_emb, text_emb, _relevance(rel), _table_scorer(itm), k=1)
    itc = retrieval_items(image_emb, text_emb, _relevance(rel))
    assert torch.equal(out["i2t_hit@1"], itc["i2t_hit@1"])
    assert torch.equal(out["t2i_hit@1"], itc["t2i_hit@1"])
    assert metrics_from_items(out) == pytest.approx(metrics_from_items(itc), abs=1e-12)


@pytest.mark.parametrize("k", [5, 10])
def test_an_oracle_scorer_lifts_r1_to_the_itc_recall_at_k(k):
    image_emb, text_emb, _, _, rel = _problem(12, 30, seed=k)

    def oracle(text_rows, image_rows):  # relevant pairs first, whatever their ITC
        return rel[image_rows, text_rows].double()

    out = rerank_items(image_emb, text_emb, _relevance(rel), oracle, k=k)
    itc = retrieval_items(image_emb, text_emb, _relevance(rel))
    for name in ("i2t", "t2i"):
        assert torch.equal(out[f"{name}_hit@1"], itc[f"{name}_hit@{k}"]), name
        assert not torch.equal(itc[f"{name}_hit@1"], itc[f"{name}_hit@{k}"])  # it did move


def test_a_collapsed_model_gets_no_credit_from_ties():
    """Equal ITC and pair scores everywhere: a non-relevant candidate ranks first (the
    pessimistic rule of retrieval_metrics), whatever the data order."""
    rel = torch.eye(4, dtype=torch.bool)
    out = rerank_items(
        torch.ones(4, 2), torch.ones(4, 2), _relevance(rel), lambda t, i: torch.zeros(len(t)), k=2
    )
    assert not out["i2t_hit@1"].any() and not out["t2i_hit@1"].any()
    assert out["i2t_ap"].tolist() == [0.25] * 4  # the positive ranks last of 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, r"^k must be an integer ≥ 1"),
        ({"k": 2.0}, r"^k must be an integer ≥ 1"),
        ({"combine": "itc"}, r"^combine must be one of \('itm', 'itm\+itc'\)"),
        ({"score_pairs": lambda t, i: torch.zeros(len(t), 2)}, r"^score_pairs must return a"),
        ({"score_pairs": lambda t, i: torch.full((len(t),), float("nan"))}, r"NaN/inf"),
        ({"text_emb": torch.zeros(5, 3)}, r"^image_emb has 4 columns but text_emb has 3"),
    ],
)
def test_bad_input_is_one_line_naming_the_argument(kwargs, match):
    args = {
        "image_emb": torch.eye(4),
        "text_emb": torch.eye(4)[[0, 1, 2, 3, 0]],
        "relevance": lambda i, t: i[:, None] == t[None, :] % 4,
        "score_pairs": lambda t, i: torch.zeros(len(t)),
    } | kwargs
    with pytest.raises(ValueError, match=match) as err:
        rerank_items(**args)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ evaluators


class _ReverseITM:
    """ITM logit = −(caption · image): the reverse of the cosine order of the raw vectors."""

    def __call__(self, text: torch.Tensor, image_tokens: torch.Tensor):
        return SimpleNamespace(itm_logit=-(text * image_tokens[:, 0]).sum(-1))


def _reverse_brute_force(scores: torch.Tensor, relevant: list[list[bool]]) -> float:
    """R@1 (percent) when the whole gallery is re-ranked by ``scores``; negatives first on ties."""
    hits = []
    for row, rel in zip(scores.tolist(), relevant):
        order = sorted(range(len(row)), key=lambda j: (-row[j], rel[j]))
        hits.append(rel[order[0]])
    return 100.0 * float(np.mean(hits))


def test_the_split_evaluator_reports_reranked_metrics_and_items():
    bank, split = stub_bank(), stub_split()
    model = StubModel(crossmodal=_ReverseITM())
    result = evaluate_split_items(model, bank, split, tower=None, batch_size=2, rerank_k=5)
    metrics, items = result.metrics, result.items
    for name in ("i2t_R@1", "i2t_R@5", "t2i_R@10", "i2t_mAP", "t2i_mAP", "rsum"):
        assert f"{name}_rerank" in metrics, name
    for metric in ("i2t_R@1_rerank", "t2i_R@5_rerank", "i2t_mAP_rerank", "t2i_mAP_rerank"):
        values = metric_items(items, metric)
        assert 100.0 * values.mean() == pytest.approx(metrics[metric]), metric
    assert len(items["i2t_ap_rerank"]) == 3 and len(items["t2i_hit@1_rerank"]) == 5
    # k = 5 covers both galleries: the ITM logit orders everything
    relevant = [[true_of(s, r) for r in range(5)] for s in range(3)]
    itm = -(IMAGES @ TEXTS.T)
    assert metrics["i2t_R@1_rerank"] == pytest.approx(_reverse_brute_force(itm, relevant))
    columns = [list(c) for c in zip(*relevant)]
    assert metrics["t2i_R@1_rerank"] == pytest.approx(_reverse_brute_force(itm.T, columns))
    assert metrics["i2t_R@1_rerank"] != metrics["i2t_R@1"]


def test_the_split_evaluator_reranks_only_when_asked_and_able():
    bank, split = stub_bank(), stub_split()
    for model, k in ((StubModel(crossmodal=_ReverseITM()), 0), (StubModel(), 5)):
        result = evaluate_split_items(model, bank, split, tower=None, batch_size=2, rerank_k=k)
        assert not any(key.endswith("_rerank") for key in [*result.metrics, *result.items])


class _TinyModel(torch.nn.Module):
    """Images and captions are fixed vectors (the pixel / token id stores the index)."""

    def __init__(self) -> None:
        super().__init__()
        self.crossmodal = _ReverseITM()

    def encode_images(self, images):
        emb = IMAGES[images.pixels[:, 0, 0, 0].long()]
        return emb, ImageOutput(emb[:, None, :], emb, (1, 1))

    def encode_texts(self, texts: Texts):
        return TEXTS[texts.input_ids[:, 0]], None

    def match(self, texts: Texts, image: ImageOutput):
        return self.crossmodal(TEXTS[texts.input_ids[:, 0]], image.tokens)


class _Captions:
    """Three images; captions "c0" … "c4" (caption j is row j of TEXTS)."""

    def __init__(self) -> None:
        self.captions = [["c0", "c1"], ["c2"], ["c3", "c4"]]
        self.semantic_ids = np.array([0, 1, 2])

    def __len__(self) -> int:
        return 3

    def load_image(self, i: int) -> torch.Tensor:
        return torch.full((3, 2, 2), float(i))


def _tokenize(texts: list[str]) -> Texts:
    ids = torch.tensor([[int(t[1:])] for t in texts])
    return Texts(ids, torch.ones_like(ids, dtype=torch.bool))


def test_the_dataset_evaluator_reports_reranked_metrics():
    model, dataset = _TinyModel(), _Captions()
    result = evaluate_dataset(model, dataset, _tokenize, batch_size=2, rerank_k=5)
    # k = 5 covers both galleries: the ITM logit orders everything
    relevant = [[i == j for j in (0, 0, 1, 2, 2)] for i in range(3)]
    itm = -(IMAGES @ TEXTS.T)
    columns = [list(c) for c in zip(*relevant)]
    assert result.metrics["i2t_R@1_rerank"] == pytest.approx(_reverse_brute_force(itm, relevant))
    assert result.metrics["t2i_R@1_rerank"] == pytest.approx(_reverse_brute_force(itm.T, columns))
    assert len(result.items["t2i_ap_rerank"]) == 5 and len(result.items["i2t_hit@1_rerank"]) == 3
    assert "i2t_R@1_rerank" not in evaluate_dataset(model, dataset, _tokenize).metrics


def test_eval_rerank_without_a_crossmodal_head_is_one_line(tmp_path, monkeypatch, capsys):
    import hardneg.train.run as run

    torch.save({"config": TrainConfig().to_dict()}, tmp_path / "checkpoint.pt")
    trainer = SimpleNamespace(
        model=SimpleNamespace(crossmodal=None), load_state_dict=lambda state: None
    )
    monkeypatch.setattr(run, "Trainer", lambda config: trainer)
    assert cli.main(["eval", str(tmp_path), "--rerank", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hardneg: error: --rerank") and err.count("\n") == 1
    assert "without --rerank" in err
    assert not (tmp_path / "eval.json").exists()
