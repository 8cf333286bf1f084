"""HardnessWeightedInfoNCELoss (LLaVE, arXiv:2503.04812) against sentence-transformers'
MultipleNegativesRankingLoss(hardness_mode=...), an independent per-row formula, InfoNCE at
α = 0, negative selection/reweighting, double backward, DDP and bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from hardneg.losses import LOSSES, HardnessWeightedInfoNCELoss, InfoNCELoss
from hardneg.losses.hardness import HARDNESS_MODES
from hardneg.train.trainer import resolve_config
from tests.helpers.ddp import run_distributed

pytestmark = pytest.mark.usefixtures("one_thread")

B, D, K = 6, 5, 2
IDS = torch.tensor([0, 1, 1, 2, 3, 3])  # two duplicated pairs; every row keeps negatives


def _inputs(seed: int = 0, batch: int = B):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, D, generator=g, dtype=torch.float64)
    txt = img + 0.8 * torch.randn(batch, D, generator=g, dtype=torch.float64)  # hard-ish
    extra = txt[:, None] + 0.5 * torch.randn(batch, K, D, generator=g, dtype=torch.float64)
    return img.requires_grad_(True), txt.requires_grad_(True), extra.requires_grad_(True)


def _loss(alpha: float, mode: str = "in_batch_negatives", **kw) -> HardnessWeightedInfoNCELoss:
    return HardnessWeightedInfoNCELoss(
        hardness_strength=alpha, hardness_mode=mode, temperature=0.05, **kw
    ).double()


def _grads(value: torch.Tensor, *inputs: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(value, inputs, allow_unused=True))


def _st(alpha: float, mode: str, scale: float, embeddings: list, **kw) -> torch.Tensor:
    """sentence-transformers' loss on given embeddings [queries, docs, negatives_1, ...]."""
    loss_fn = MultipleNegativesRankingLoss(
        None, scale=scale, hardness_mode=mode, hardness_strength=alpha, **kw
    )
    return loss_fn.compute_loss_from_embeddings(embeddings, None)


def _close(got, expected, tol=1e-10):
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ------------------------------------------------------------------ sentence-transformers parity


@pytest.mark.parametrize("with_extra", [False, True])
@pytest.mark.parametrize("mode", HARDNESS_MODES)
def test_image_to_text_equals_sentence_transformers(mode, with_extra):
    """One direction, same α and scale: value and gradients equal ST's on the same embeddings
    (its explicit negatives columns = our (B, K, d) extra captions)."""
    img, txt, extra = _inputs()
    loss_fn = _loss(9.0, mode)
    pairs = loss_fn.prepare(img, txt, extra_text_emb=extra if with_extra else None)
    ours = loss_fn.direction_losses(pairs)[0].mean()
    negs = [extra[:, k] for k in range(K)] if with_extra else []
    st = _st(9.0, mode, float(loss_fn.scale().detach()), [img, txt, *negs])
    assert ours.item() == pytest.approx(st.item(), rel=1e-12)
    _close(_grads(ours, img, txt, extra), _grads(st, img, txt, extra))


def test_hardness_changes_the_loss_so_the_parity_is_not_vacuous():
    img, txt, extra = _inputs()
    negs = [extra[:, k] for k in range(K)]
    values = {_st(9.0, mode, 20.0, [img, txt, *negs]).item() for mode in HARDNESS_MODES}
    values.add(_st(0.0, "in_batch_negatives", 20.0, [img, txt, *negs]).item())
    assert len(values) == 4


def test_symmetric_loss_is_st_on_both_role_assignments():
    """Ours = ½(ST(image queries, text docs) + ST(text queries, image docs))."""
    img, txt, _ = _inputs(1)
    loss_fn = _loss(9.0)
    ours = loss_fn(img, txt)
    scale = float(loss_fn.scale().detach())
    expected = 0.5 * (
        _st(9.0, "in_batch_negatives", scale, [img, txt])
        + _st(9.0, "in_batch_negatives", scale, [txt, img])
    )
    assert ours.item() == pytest.approx(expected.item(), rel=1e-12)
    _close(_grads(ours, img, txt), _grads(expected, img, txt))


def test_st_symmetric_variant_puts_no_hardness_on_doc_to_query():
    """ST's ("query_to_doc", "doc_to_query") per-direction loss = ½(our hard i2t + InfoNCE t2i):
    our text→image rows are its doc_to_query rows, and it leaves them unweighted."""
    img, txt, _ = _inputs(2)
    hard, plain = _loss(9.0), _loss(0.0)
    i2t = hard.direction_losses(hard.prepare(img, txt))[0]
    t2i = plain.direction_losses(plain.prepare(img, txt))[1]
    ours = 0.5 * (i2t.mean() + t2i.mean())
    st = _st(
        9.0,
        "in_batch_negatives",
        float(hard.scale().detach()),
        [img, txt],
        directions=("query_to_doc", "doc_to_query"),
        partition_mode="per_direction",
    )
    assert ours.item() == pytest.approx(st.item(), rel=1e-12)
    _close(_grads(ours, img, txt), _grads(st, img, txt))


# ------------------------------------------------------------------- independent row formula


def _reference(img, txt, extra, ids, alpha, mode, tau, weights=None):
    """Row by row: −log e^{z⁺}/(e^{z⁺} + Σ_n w_n e^{s_n/τ + α·sg(s_n)·[n penalised]})."""
    u, v = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    e = None if extra is None else F.normalize(extra, dim=-1)
    rows = {"i2t": [], "t2i": []}
    for i in range(len(u)):
        for direction, anchor, others in (("i2t", u[i], v), ("t2i", v[i], u)):
            pos, neg = [], []
            cands = [(j, others[j], False) for j in range(len(u))]
            if direction == "i2t" and e is not None:
                cands += [(b, e[b, k], True) for b in range(len(u)) for k in range(e.shape[1])]
            for col, (owner, cand, is_extra) in enumerate(cands):
                s = anchor @ cand
                own = bool(ids[owner] == ids[i])
                if own and not is_extra:
                    pos.append(s / tau)
                    continue
                hit = {
                    "all_negatives": True,
                    "in_batch_negatives": not (is_extra and own),
                    "hard_negatives": is_extra and own,
                }[mode]
                w = 1.0 if weights is None else weights[direction][i, col]
                if w > 0:
                    neg.append(s / tau + alpha * float(hit) * s.detach() + math.log(w))
            z_pos = torch.logsumexp(torch.stack(pos), 0) - math.log(len(pos))
            rows[direction].append(torch.logsumexp(torch.stack([z_pos, *neg]), 0) - z_pos)
    return torch.stack(rows["i2t"]), torch.stack(rows["t2i"])


@pytest.mark.parametrize("mode", HARDNESS_MODES)
def test_matches_row_formula_with_ids_and_extra_captions(mode):
    img, txt, extra = _inputs(3)
    loss_fn = _loss(4.0, mode)
    ours = loss_fn(img, txt, positive_ids=IDS, extra_text_emb=extra)
    i2t, t2i = _reference(img, txt, extra, IDS, 4.0, mode, 1 / float(loss_fn.scale().detach()))
    expected = 0.5 * (i2t.mean() + t2i.mean())
    assert ours.item() == pytest.approx(expected.item(), rel=1e-12)
    _close(_grads(ours, img, txt, extra), _grads(expected, img, txt, extra))


def test_flat_extra_captions_are_read_pair_major():
    """(B·K, d) extras with row b·K + k = hard negative k of pair b: the same as (B, K, d)."""
    img, txt, extra = _inputs(4)
    loss_fn = _loss(9.0)
    flat = loss_fn(img, txt, extra_text_emb=extra.reshape(B * K, D))
    assert flat.item() == pytest.approx(loss_fn(img, txt, extra_text_emb=extra).item(), rel=1e-14)
    # the ownership matters: another pairing of captions to pairs gives another loss
    shuffled = extra.roll(1, dims=0)
    assert abs(loss_fn(img, txt, extra_text_emb=shuffled).item() - flat.item()) > 1e-3


def test_selected_and_reweighted_candidates_use_the_cosine_not_the_logit():
    """After restrict() only kept negatives count; after reweight() a negative enters as
    w·e^{s/τ + α s}: the bonus is α·cos, not α·(logit + log w)·τ."""
    img, txt, _ = _inputs(5)
    loss_fn = _loss(6.0)
    pairs = loss_fn.prepare(img, txt, positive_ids=IDS)
    g = torch.Generator().manual_seed(9)
    w = {d: torch.rand(B, B, generator=g, dtype=torch.float64) for d in ("i2t", "t2i")}
    w["i2t"][0, 3] = w["t2i"][4, 1] = 0.0  # removed candidates (logit −inf)
    tau = 1 / float(loss_fn.scale().detach())
    i2t, t2i = loss_fn.direction_losses(pairs.reweight(w["i2t"], w["t2i"]))
    ref_i2t, ref_t2i = _reference(img, txt, None, IDS, 6.0, "in_batch_negatives", tau, w)
    torch.testing.assert_close(i2t, ref_i2t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(t2i, ref_t2i, rtol=1e-10, atol=1e-12)
    keep = {d: w[d] > 0.5 for d in w}
    i2t, t2i = loss_fn.direction_losses(pairs.restrict(keep["i2t"], keep["t2i"]))
    as_weights = {d: keep[d].double() for d in keep}
    ref_i2t, ref_t2i = _reference(img, txt, None, IDS, 6.0, "in_batch_negatives", tau, as_weights)
    torch.testing.assert_close(i2t, ref_i2t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(t2i, ref_t2i, rtol=1e-10, atol=1e-12)


def test_double_backward_equals_the_row_formula():
    """A gradient-norm penalty works and treats the bonus as a constant, as the formula does."""
    img, txt, extra = _inputs(6)
    loss_fn = _loss(9.0)
    tau = 1 / float(loss_fn.scale().detach())

    def penalty(value):
        (g,) = torch.autograd.grad(value, img, create_graph=True)
        return g.norm()

    ours = penalty(loss_fn(img, txt, positive_ids=IDS, extra_text_emb=extra))
    i2t, t2i = _reference(img, txt, extra, IDS, 9.0, "in_batch_negatives", tau)
    expected = penalty(0.5 * (i2t.mean() + t2i.mean()))
    _close(_grads(ours, img, txt), _grads(expected, img, txt))


# ------------------------------------------------------------------------------------ α = 0


@pytest.mark.parametrize("mode", HARDNESS_MODES)
def test_zero_strength_is_infonce(mode):
    img, txt, extra = _inputs(7)
    ours_fn, ref_fn = _loss(0.0, mode), InfoNCELoss(temperature=0.05).double()
    ours = ours_fn(img, txt, positive_ids=IDS, extra_text_emb=extra)
    ref = ref_fn(img, txt, positive_ids=IDS, extra_text_emb=extra)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    # the embeddings' gradients and the temperature's
    _close(
        _grads(ours, img, txt, extra, ours_fn.logit_scale),
        _grads(ref, img, txt, extra, ref_fn.logit_scale),
    )


def test_hard_negatives_mode_without_extra_captions_is_infonce():
    img, txt, _ = _inputs(8)
    ours = _loss(9.0, "hard_negatives")(img, txt, positive_ids=IDS)
    ref = InfoNCELoss(temperature=0.05).double()(img, txt, positive_ids=IDS)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)


def test_temperature_gradient_ignores_the_detached_bonus():
    """∂L/∂log(1/τ) = Σ (z − bonus)·∂L/∂z: the bonus carries no τ dependence."""
    img, txt, _ = _inputs(9)
    loss_fn = _loss(9.0)
    (g_scale,) = torch.autograd.grad(loss_fn(img, txt), loss_fn.logit_scale)
    eps = 1e-6
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            shifted = _loss(9.0)
            shifted.logit_scale.add_(sign * eps)
            tau = 1 / float(shifted.scale())
            i2t, t2i = _reference(img, txt, None, torch.arange(B), 9.0, "in_batch_negatives", tau)
            values.append(0.5 * (i2t.mean() + t2i.mean()))
    assert g_scale.item() == pytest.approx(((values[0] - values[1]) / (2 * eps)).item(), rel=1e-5)


# --------------------------------------------------------------------------------------- DDP


def _ddp_case(img, txt, extra, ids, mode):
    img, txt, extra = (x.detach().clone().requires_grad_(True) for x in (img, txt, extra))
    loss_fn = _loss(9.0, mode)
    loss = loss_fn(img, txt, positive_ids=ids, extra_text_emb=extra)
    loss.backward()
    return {"loss": loss.detach(), "grads": [img.grad, txt.grad, extra.grad]}


def _ddp_worker(rank, world):
    img, txt, extra = _inputs(10, batch=2 * B)
    ids = torch.arange(2 * B) % 9  # duplicates across the two ranks
    rows = slice(rank * B, (rank + 1) * B)
    return {
        mode: _ddp_case(img[rows], txt[rows], extra[rows], ids[rows], mode)
        for mode in HARDNESS_MODES
    }


@pytest.mark.slow
def test_two_ranks_equal_one_process():
    """Each extra caption keeps its owner when gathered: 2 gloo ranks == the whole batch."""
    ranks = run_distributed(_ddp_worker, 2)
    img, txt, extra = _inputs(10, batch=2 * B)
    for mode in HARDNESS_MODES:
        single = _ddp_case(img, txt, extra, torch.arange(2 * B) % 9, mode)
        mean = sum(r[mode]["loss"] for r in ranks) / 2
        assert mean.item() == pytest.approx(single["loss"].item(), rel=1e-12), mode
        for k, grad in enumerate(single["grads"]):
            got = torch.cat([r[mode]["grads"][k] for r in ranks]) / 2
            torch.testing.assert_close(got, grad, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------ registry and errors


def test_registered_as_loss_and_method():
    cfg = resolve_config("mnrl_hardness", {})
    loss_fn = LOSSES[cfg.loss.name](**cfg.loss.kwargs)
    assert isinstance(loss_fn, HardnessWeightedInfoNCELoss)
    assert (loss_fn.hardness_strength, loss_fn.hardness_mode) == (9.0, "in_batch_negatives")


@pytest.mark.parametrize(
    "arg,value",
    [("hardness_strength", v) for v in (-1.0, math.inf, math.nan, "9", None, True)]
    + [("hardness_mode", v) for v in ("hard", None, 1, "in_batch")],
)
def test_bad_arguments_are_named(arg, value):
    with pytest.raises(ValueError, match=arg):
        HardnessWeightedInfoNCELoss(**{arg: value})


def test_extra_captions_without_owners_are_refused_unless_all_negatives():
    img, txt, _ = _inputs(11)
    pool = torch.randn(B + 1, D, dtype=torch.float64)  # not K per pair
    for mode in ("in_batch_negatives", "hard_negatives"):
        with pytest.raises(ValueError, match=r"extra_text_emb.*all_negatives"):
            _loss(9.0, mode)(img, txt, extra_text_emb=pool)
    assert torch.isfinite(_loss(9.0, "all_negatives")(img, txt, extra_text_emb=pool))
