"""BACL's re-ranker: the listwise loss against a cross-entropy written out here, and a run
that trains only the cross-modal transformer (the frozen dual encoder stays bit-identical)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from hardneg.models.outputs import ImageOutput, TextOutput
from hardneg.train.listwise import listwise_rerank_loss
from hardneg.train.trainer import Trainer, resolve_config
from tests.helpers.trainer_values import trainer_values

pytestmark = pytest.mark.usefixtures("one_thread")


class _Scorer:
    """f(T, I) = ⟨mean of T's real tokens, mean of I's tokens⟩ (any pair function will do),
    with the ``AlignmentModel`` entry points the loss uses."""

    def crossmodal_text(self, text: TextOutput) -> TextOutput:
        return text

    def crossmodal_image(self, image: ImageOutput) -> torch.Tensor:
        return image.tokens

    def crossmodal(self, text: TextOutput, patches: torch.Tensor):
        weights = text.mask.float().unsqueeze(-1)
        t = (text.tokens * weights).sum(1) / weights.sum(1)
        return SimpleNamespace(itm_logit=(t * patches.mean(1)).sum(-1))


def _score(text: TextOutput, image: ImageOutput, i: int, j: int) -> float:
    n = int(text.mask[i].sum())
    return float(text.tokens[i, :n].mean(0) @ image.tokens[j].mean(0))


def test_listwise_loss_is_the_cross_entropy_of_the_positive_among_the_picks():
    g = torch.Generator().manual_seed(0)
    r, k = 5, 3
    mask = torch.ones(r, 6, dtype=torch.bool)
    mask[1, 4:] = False  # a shorter caption
    tokens = torch.randn(r, 6, 4, generator=g)
    text = TextOutput(tokens, mask, tokens[:, 0], torch.zeros(r, 6, dtype=torch.long))
    image = ImageOutput(torch.randn(r, 9, 4, generator=g), torch.randn(r, 4), (3, 3))
    picks_i2t = torch.tensor([[1, 2, 3], [0, 2, 4], [3, 4, 0], [1, 0, 2], [3, 2, 1]])
    picks_t2i = torch.tensor([[4, 3, 2], [2, 3, 4], [0, 1, 3], [4, 2, 0], [0, 1, 2]])
    mined = SimpleNamespace(
        i2t=SimpleNamespace(indices=picks_i2t), t2i=SimpleNamespace(indices=picks_t2i)
    )
    loss, logs = listwise_rerank_loss(_Scorer(), text, image, mined)

    def ce(scores: list[float]) -> float:
        return -scores[0] + math.log(sum(math.exp(s) for s in scores))

    i2t = [ce([_score(text, image, i, i)] + [_score(text, image, int(j), i) for j in picks_i2t[i]])
           for i in range(r)]  # fmt: skip
    t2i = [ce([_score(text, image, i, i)] + [_score(text, image, i, int(j)) for j in picks_t2i[i]])
           for i in range(r)]  # fmt: skip
    expected = 0.5 * (sum(i2t) / r + sum(t2i) / r)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= logs["rerank_acc"] <= 100.0
    assert k == picks_i2t.shape[1]


@pytest.fixture(scope="module")
def bacl_run(tmp_path_factory, tiny_text_model):
    tmp = tmp_path_factory.mktemp("bacl")
    values = trainer_values(
        tmp, tiny_text_model, steps=4, pretrain={"steps": 4, "batch_size": 16},
        optim={"lr": 1e-2, "warmup_steps": 0},
    )  # fmt: skip
    trainer = Trainer(resolve_config("bacl", values))
    dual = {k: v.clone() for k, v in trainer.model.dual.state_dict().items()}
    cross = {k: v.clone() for k, v in trainer.model.crossmodal.state_dict().items()}
    history = trainer.fit()
    return trainer, dual, cross, history


def test_the_frozen_dual_encoder_stays_bit_identical_and_the_reranker_trains(bacl_run):
    trainer, dual, cross, history = bacl_run
    for key, value in trainer.model.dual.state_dict().items():
        assert torch.equal(value, dual[key]), key
    moved = [
        k for k, v in trainer.model.crossmodal.state_dict().items() if not torch.equal(v, cross[k])
    ]
    assert moved
    assert all("rerank" in h and "cla" in h and "contrastive" not in h for h in history)


def test_the_reranker_is_evaluated_by_re_ranking(bacl_run):
    trainer = bacl_run[0]
    assert trainer.cfg.rerank_k == trainer.cfg.eval_rerank_k > 0
    assert resolve_config("frozen", {"steps": 1, "pretrain": {"steps": 1}}).rerank_k == 0
