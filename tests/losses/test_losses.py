"""Contrastive losses vs. independent references: open_clip, row formulas, finite differences."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from hardneg.losses import (
    DCLLoss,
    DecoupledInfoNCELoss,
    EGALoss,
    HCLLoss,
    InfoNCELoss,
    NegCLIPLoss,
    SigLIPLoss,
    SoftInfoNCELoss,
)
from hardneg.losses.pairs import Positives
from tests.helpers.losses import grads, pair

ALL_LOSSES = [
    InfoNCELoss,
    SigLIPLoss,
    HCLLoss,
    DCLLoss,
    DecoupledInfoNCELoss,
    SoftInfoNCELoss,
    EGALoss,
]


# --------------------------------------------------------------------------- open_clip parity


def test_infonce_matches_open_clip_value_and_grads():
    u, v = pair(dtype=torch.float32)
    ours = InfoNCELoss(temperature=0.05)
    l1, gu1, gv1 = grads(ours, u, v)
    ours.logit_scale.grad = None

    scale = torch.tensor(1 / 0.05, requires_grad=True)

    def ref(a, b):
        return ClipLoss()(F.normalize(a, dim=-1), F.normalize(b, dim=-1), scale)

    l2, gu2, gv2 = grads(ref, u, v)
    assert torch.allclose(l1, l2, atol=1e-6)
    assert torch.allclose(gu1, gu2, atol=1e-6)
    assert torch.allclose(gv1, gv2, atol=1e-6)
    # temperature gradient: d/d log(scale) = scale * d/d scale
    ours(u, v).backward()
    assert torch.allclose(ours.logit_scale.grad, scale.grad * scale.detach(), atol=1e-5)


def test_infonce_with_distinct_ids_equals_no_ids():
    u, v = pair()
    a = InfoNCELoss().double()(u, v)
    b = InfoNCELoss().double()(u, v, positive_ids=torch.arange(12) * 7)
    assert torch.allclose(a, b, atol=1e-12)


def test_siglip_matches_open_clip_value_and_grads():
    u, v = pair(dtype=torch.float32)
    ours = SigLIPLoss(temperature=0.1, bias=-10.0)
    l1, gu1, gv1 = grads(ours, u, v)
    scale = torch.tensor(10.0)
    bias = torch.tensor(-10.0, requires_grad=True)

    def ref(a, b):
        return SigLipLoss()(F.normalize(a, dim=-1), F.normalize(b, dim=-1), scale, bias)

    l2, gu2, gv2 = grads(ref, u, v)
    assert torch.allclose(l1, l2, atol=1e-6)
    assert torch.allclose(gu1, gu2, atol=1e-6)
    assert torch.allclose(gv1, gv2, atol=1e-6)
    assert torch.allclose(ours.logit_bias.grad, bias.grad, atol=1e-5)


def test_siglip_multi_positive_labels_follow_ids():
    u, v = pair(b=6)
    ids = torch.tensor([0, 0, 1, 2, 2, 2])
    loss = SigLIPLoss().double()
    got = loss(u, v, positive_ids=ids)
    s = F.normalize(u, dim=-1) @ F.normalize(v, dim=-1).T
    y = torch.where(ids[:, None] == ids[None, :], 1.0, -1.0).double()
    expected = (
        -sum(
            math.log(1 / (1 + math.exp(-y[i, j] * (10 * s[i, j] - 10))))
            for i in range(6)
            for j in range(6)
        )
        / 6
    )
    # t = exp(log 10) was stored in fp32 before .double(): agree to fp32 precision
    assert got.item() == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------- per-row reference formulas


def _rows_reference(u, v, ids, scale, row_fn, extra=None):
    """Symmetric loss from a per-row function of (positive logits list, negative logits list)."""
    un, vn = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
    cand = vn if extra is None else torch.cat([vn, F.normalize(extra, dim=-1)])
    b = u.shape[0]
    ids = torch.arange(b) if ids is None else ids
    total_i2t = 0.0
    for i in range(b):
        zs = [float(scale * un[i] @ cand[j]) for j in range(cand.shape[0])]
        pos = [zs[j] for j in range(b) if ids[j] == ids[i]]
        neg = [zs[j] for j in range(len(zs)) if j >= b or ids[j] != ids[i]]
        total_i2t += row_fn(pos, neg)
    total_t2i = 0.0
    for i in range(b):
        zs = [float(scale * vn[i] @ un[j]) for j in range(b)]
        pos = [zs[j] for j in range(b) if ids[j] == ids[i]]
        neg = [zs[j] for j in range(b) if ids[j] != ids[i]]
        total_t2i += row_fn(pos, neg)
    return 0.5 * (total_i2t / b + total_t2i / b)


def _hcl_row(tau_plus, beta, scale):
    """joshr17/HCL reference formula for one anchor, in plain Python floats."""

    def row(pos_z, neg_z):
        if not neg_z:
            return 0.0
        pos = sum(math.exp(z) for z in pos_z) / len(pos_z)
        neg = [math.exp(z) for z in neg_z]
        n = len(neg)
        imp = [x**beta for x in neg]
        reweight = sum(a * b for a, b in zip(imp, neg)) / (sum(imp) / n)
        ng = (-tau_plus * n * pos + reweight) / (1 - tau_plus)
        ng = max(ng, n * math.exp(-scale))
        return -math.log(pos / (pos + ng))

    return row


@pytest.mark.parametrize("ids", [None, torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 7, 8])])
@pytest.mark.parametrize("beta,tau_plus", [(1.0, 0.1), (0.5, 0.05), (0.0, 0.1)])
def test_hcl_matches_reference_formula(ids, beta, tau_plus):
    u, v = pair()
    loss = HCLLoss(beta=beta, tau_plus=tau_plus, temperature=0.5).double()
    expected = _rows_reference(u, v, ids, 2.0, _hcl_row(tau_plus, beta, 2.0))
    assert loss(u, v, positive_ids=ids).item() == pytest.approx(expected, rel=1e-9)


def test_hcl_clamp_branch_matches_reference():
    # a large τ⁺ makes the debiased estimate negative, so the clamp N·e^{-1/τ} is active
    u, v = pair(seed=3)
    loss = HCLLoss(beta=1.0, tau_plus=0.9, temperature=0.5).double()
    expected = _rows_reference(u, v, None, 2.0, _hcl_row(0.9, 1.0, 2.0))
    assert loss(u, v).item() == pytest.approx(expected, rel=1e-9)


def test_hcl_beta_zero_equals_dcl():
    u, v = pair(seed=1)
    ids = torch.tensor([0, 0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9])
    a, gu_a, gv_a = grads(HCLLoss(beta=0.0, tau_plus=0.1).double(), u, v, positive_ids=ids)
    b, gu_b, gv_b = grads(DCLLoss(tau_plus=0.1).double(), u, v, positive_ids=ids)
    assert torch.allclose(a, b) and torch.allclose(gu_a, gu_b) and torch.allclose(gv_a, gv_b)


def test_hcl_gradient_matches_finite_differences():
    u, v = pair(b=5, d=4, seed=2)
    loss = HCLLoss(beta=1.0, tau_plus=0.1, temperature=0.5).double()
    assert torch.autograd.gradcheck(
        lambda a, b: loss(a, b), (u.requires_grad_(), v.requires_grad_())
    )


def test_decoupled_matches_reference_formula():
    u, v = pair(seed=4)
    ids = torch.tensor([0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 9])

    def row(pos, neg):
        lme = math.log(sum(math.exp(z) for z in pos) / len(pos))
        return math.log(sum(math.exp(z) for z in neg)) - lme

    loss_fn = DecoupledInfoNCELoss().double()
    expected = _rows_reference(u, v, ids, loss_fn.scale().item(), row)
    got = loss_fn(u, v, positive_ids=ids)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_soft_infonce_matches_reference_formula():
    u, v = pair(seed=5)
    loss_fn = SoftInfoNCELoss(weight_temperature=0.5).double()
    tw, scale = 0.5, loss_fn.scale().item()

    def row(pos, neg):
        sims = [z / scale for z in neg]
        e = [math.exp(-s / tw) for s in sims]
        w = [len(neg) * x / sum(e) for x in e]
        pos_e = sum(math.exp(z) for z in pos) / len(pos)
        return -math.log(pos_e / (pos_e + sum(wi * math.exp(z) for wi, z in zip(w, neg))))

    expected = _rows_reference(u, v, None, scale, row)
    got = loss_fn(u, v)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_soft_infonce_large_weight_temperature_is_infonce():
    u, v = pair(seed=6)
    a = SoftInfoNCELoss(weight_temperature=1e9).double()(u, v)
    b = InfoNCELoss().double()(u, v)
    assert a.item() == pytest.approx(b.item(), rel=1e-7)


def test_infonce_multi_positive_matches_reference_formula():
    u, v = pair(seed=7)
    ids = torch.tensor([0, 0, 0, 1, 2, 3, 3, 4, 5, 6, 7, 8])

    def row(pos, neg):
        lme = math.log(sum(math.exp(z) for z in pos) / len(pos))
        return -lme + math.log(math.exp(lme) + sum(math.exp(z) for z in neg))

    loss_fn = InfoNCELoss().double()
    expected = _rows_reference(u, v, ids, loss_fn.scale().item(), row)
    got = loss_fn(u, v, positive_ids=ids)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_negclip_extra_negatives_only_on_image_side():
    u, v = pair(b=6, seed=8)
    extra = torch.randn(6, 2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(9))

    def ce_row(pos, neg):
        return -pos[0] + math.log(math.exp(pos[0]) + sum(math.exp(z) for z in neg))

    loss_fn = NegCLIPLoss().double()
    scale = loss_fn.scale().item()
    un, vn, en = (F.normalize(x, dim=-1) for x in (u, v, extra.reshape(-1, 16)))
    i2t = (
        sum(
            ce_row(
                [float(scale * un[i] @ vn[i])],
                [float(scale * un[i] @ c) for j, c in enumerate(torch.cat([vn, en])) if j != i],
            )
            for i in range(6)
        )
        / 6
    )
    t2i = (
        sum(
            ce_row(
                [float(scale * vn[i] @ un[i])],
                [float(scale * vn[i] @ un[j]) for j in range(6) if j != i],
            )
            for i in range(6)
        )
        / 6
    )
    got = loss_fn(u, v, extra_text_emb=extra)
    assert got.item() == pytest.approx(0.5 * (i2t + t2i), rel=1e-9)
    with pytest.raises(ValueError, match="extra_text_emb"):
        NegCLIPLoss()(u, v)


# EGA (the renormalised default, the literal option and their gradients): tests/losses/test_ega.py


# ----------------------------------------------------------------------------- multi-positive


@pytest.mark.parametrize("loss_cls", ALL_LOSSES)
def test_duplicate_caption_is_not_pushed_away(loss_cls):
    u, v = pair(b=8, seed=15)
    v[5] = v[4]  # caption 5 duplicates caption 4 ...
    ids = torch.tensor([0, 1, 2, 3, 4, 4, 6, 7])  # ... and shares its semantic id
    loss_fn = loss_cls().double()
    pairs = loss_fn.prepare(u, v, positive_ids=ids)
    text = pairs.text.detach().requires_grad_(True)
    pairs = type(pairs)(**{**pairs.__dict__, "text": text, "all_text": text})
    loss = loss_fn.loss(pairs)
    assert torch.isfinite(loss)
    (g,) = torch.autograd.grad(loss, text)
    # moving caption 5 towards image 4 (its positive) must not increase the loss
    toward = F.normalize(u[4], dim=0) - text[5].detach()
    assert float(g[5] @ toward) <= 1e-12
    toward = F.normalize(u[5], dim=0) - text[4].detach()
    assert float(g[4] @ toward) <= 1e-12


@pytest.mark.parametrize("loss_cls", [c for c in ALL_LOSSES if c is not SigLIPLoss])
def test_rows_without_negatives_give_zero_and_no_nan(loss_cls):
    u, v = pair(b=4, seed=16)
    loss, gu, gv = grads(loss_cls().double(), u, v, positive_ids=torch.zeros(4, dtype=torch.long))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.isfinite(gu).all() and torch.isfinite(gv).all()
    assert gu.abs().max() < 1e-12


def test_siglip_all_positive_is_finite():
    u, v = pair(b=4, seed=16)
    loss, gu, _ = grads(SigLIPLoss().double(), u, v, positive_ids=torch.zeros(4, dtype=torch.long))
    assert torch.isfinite(loss) and torch.isfinite(gu).all()


def test_infonce_log_sum_aggregate():
    u, v = pair(seed=17)
    ids = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])

    def row(pos, neg):
        lse = math.log(sum(math.exp(z) for z in pos))
        return -lse + math.log(math.exp(lse) + sum(math.exp(z) for z in neg))

    loss_fn = InfoNCELoss(aggregate="sum").double()
    expected = _rows_reference(u, v, ids, loss_fn.scale().item(), row)
    got = loss_fn(u, v, positive_ids=ids)
    assert got.item() == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------------ chunked


@pytest.mark.parametrize("loss_cls", [InfoNCELoss, EGALoss])
@pytest.mark.parametrize("with_ids", [False, True])
@pytest.mark.parametrize("with_extra", [False, True])
def test_chunked_equals_naive(loss_cls, with_ids, with_extra):
    u, v = pair(b=23, d=8, seed=18)
    kw = {}
    if with_ids:
        kw["positive_ids"] = torch.arange(23) % 17
    if with_extra:
        kw["extra_text_emb"] = torch.randn(23, 2, 8, dtype=torch.float64)
    naive = loss_cls().double()
    chunked = loss_cls(chunk_size=5).double()
    l1, gu1, gv1 = grads(naive, u, v, **kw)
    l2, gu2, gv2 = grads(chunked, u, v, **kw)
    assert torch.allclose(l1, l2, atol=1e-12)
    assert torch.allclose(gu1, gu2, atol=1e-12) and torch.allclose(gv1, gv2, atol=1e-12)
    assert torch.allclose(naive.logit_scale.grad, chunked.logit_scale.grad, atol=1e-12)


def test_chunked_extra_negatives_receive_gradient():
    u, v = pair(b=9, d=8, seed=19)
    e1 = torch.randn(9, 8, dtype=torch.float64, requires_grad=True)
    e2 = e1.detach().clone().requires_grad_(True)
    InfoNCELoss().double()(u, v, extra_text_emb=e1).backward()
    InfoNCELoss(chunk_size=4).double()(u, v, extra_text_emb=e2).backward()
    assert torch.allclose(e1.grad, e2.grad, atol=1e-12) and e1.grad.abs().sum() > 0


# ------------------------------------------------------------------------ dtypes and bad input


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss_cls", ALL_LOSSES)
def test_low_precision_inputs_give_finite_fp32_loss(loss_cls, dtype):
    u, v = pair(b=16, d=32, seed=20, dtype=torch.float32)
    u, v = (u * 30).to(dtype).requires_grad_(True), (v * 30).to(dtype)
    loss = loss_cls()(u, v)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(u.grad.float()).all()


@pytest.mark.parametrize("loss_cls", ALL_LOSSES)
def test_bad_input_raises_clear_errors(loss_cls):
    loss = loss_cls()
    u, v = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match="image_emb has 4 rows but text_emb has 3"):
        loss(u, v[:3])
    with pytest.raises(ValueError, match="8 columns but text_emb has 6"):
        loss(u, v[:, :6])
    with pytest.raises(ValueError, match="NaN or inf"):
        loss(u.clone().index_fill_(0, torch.tensor([1]), float("nan")), v)
    with pytest.raises(ValueError, match="text_emb contains NaN or inf"):
        loss(u, v.clone().index_fill_(0, torch.tensor([2]), float("inf")))
    with pytest.raises(ValueError, match="at least 2"):
        loss(u[:1], v[:1])
    with pytest.raises(ValueError, match="positive_ids must have shape"):
        loss(u, v, positive_ids=torch.arange(3))
    with pytest.raises(ValueError, match="must be 2-D"):
        loss(u[0], v[0])
    with pytest.raises(ValueError, match="extra_text_emb has dimension"):
        loss(u, v, extra_text_emb=torch.randn(4, 2, 5))
    with pytest.raises(ValueError, match="positive_ids must be integers"):
        loss(u, v, positive_ids=torch.rand(4))


def test_bad_hyperparameters_raise():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=0.0)
    with pytest.raises(ValueError, match="tau_plus"):
        HCLLoss(tau_plus=1.0)
    with pytest.raises(ValueError, match="alpha"):
        EGALoss(alpha=-1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        InfoNCELoss(chunk_size=0)
    with pytest.raises(ValueError, match="aggregate"):
        InfoNCELoss(aggregate="max")


def test_temperature_is_clamped_and_learnable():
    loss = InfoNCELoss(temperature=0.001)
    assert loss.scale().item() == pytest.approx(100.0)
    fixed = InfoNCELoss(learn_temperature=False)
    assert not any(p.requires_grad for p in fixed.parameters())


# --------------------------------------------------------------------- selected negatives only


@pytest.mark.parametrize(
    "loss_cls", [InfoNCELoss, EGALoss, HCLLoss, DecoupledInfoNCELoss, SoftInfoNCELoss]
)
def test_restrict_scores_only_the_selected_negatives(loss_cls):
    """The loss on a restricted batch equals the reference formula on {positive ∪ selected}."""
    u, v = pair(b=7, seed=21)
    g = torch.Generator().manual_seed(22)
    keep_i2t = torch.rand(7, 7, generator=g) < 0.5
    keep_t2i = torch.rand(7, 7, generator=g) < 0.5
    loss_fn = loss_cls().double()
    got = loss_fn.loss(loss_fn.prepare(u, v).restrict(keep_i2t, keep_t2i))
    # reference: the unrestricted loss of each row with only its kept negatives present
    scale = loss_fn.scale()
    un, vn = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
    total = 0.0
    for anchors, cands, keep in ((un, vn, keep_i2t), (vn, un, keep_t2i)):
        for i in range(7):
            cols = [i] + [j for j in range(7) if j != i and keep[i, j]]
            sub_loss = loss_cls().double()
            with torch.no_grad():
                sub_loss.logit_scale.copy_(loss_fn.logit_scale)
            pairs = sub_loss.prepare(anchors[i : i + 1].expand(len(cols), -1), cands[cols])
            z = scale * (pairs.image[:1] @ pairs.all_text.T)
            row = sub_loss.row_loss(z, Positives(index=torch.tensor([0])), scale)
            total += row[0].item()
    assert got.item() == pytest.approx(total / 14, rel=1e-9)
