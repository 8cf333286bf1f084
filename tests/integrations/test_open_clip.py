"""open_clip integration: drop-in loss adapter (caller's scale/bias) and the BNS miner hook."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from hardneg.integrations.open_clip import (
    BoundaryAwareMiner,
    HardnegClipLoss,
    HardnegSigLipLoss,
    OpenCLIPLossAdapter,
)
from hardneg.miners import BNSConfig
from tests.helpers.examples import run_example


def _features(b: int = 8, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    return img, txt


CLIP_LOG_SCALE = math.log(1 / 0.07)


def _value_and_grads(loss_fn, img, txt, log_scale=CLIP_LOG_SCALE, bias=None, **kwargs):
    """Loss value and gradients w.r.t. features, the model's log-scale and bias parameters."""
    i = img.clone().requires_grad_()
    t = txt.clone().requires_grad_()
    s = torch.tensor(log_scale, dtype=img.dtype, requires_grad=True)
    b = None if bias is None else torch.tensor(bias, dtype=img.dtype, requires_grad=True)
    args = (i, t, s.exp()) if b is None else (i, t, s.exp(), b)
    value = loss_fn(*args, **kwargs)
    value.backward()
    return value.detach(), i.grad, t.grad, s.grad, None if b is None else b.grad


# --------------------------------------------------------------------------- parity / scale


@pytest.mark.parametrize("bias", [None, -2.5])
def test_infonce_adapter_equals_open_clip_cliploss_values_and_grads(bias):
    """HardnegClipLoss("infonce") == ClipLoss (value, feature and logit_scale grads) to 1e-6."""
    for dtype in (torch.float64, torch.float32):
        img, txt = (x.to(dtype) for x in _features(b=12, d=24, seed=1))
        ours = _value_and_grads(HardnegClipLoss("infonce"), img, txt, bias=bias)
        ref = _value_and_grads(ClipLoss(), img, txt, bias=bias)
        for a, b in zip(ours[:4], ref[:4]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_siglip_adapter_equals_open_clip_sigliploss_values_and_grads():
    """HardnegSigLipLoss == SigLipLoss at the caller's scale and bias (grads of both too)."""
    img, txt = _features(b=10, d=16, seed=2)
    ours = _value_and_grads(HardnegSigLipLoss(), img, txt, log_scale=math.log(10.0), bias=-4.0)
    ref = _value_and_grads(SigLipLoss(), img, txt, log_scale=math.log(10.0), bias=-4.0)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("renormalize", [True, False])
def test_ega_adapter_gradient_is_the_amplified_softmax_at_the_callers_scale(renormalize):
    """EGA through the adapter: value = CLIP loss; with weights w_in = 1 + α·min(1, p_in/p_ii)
    (w_ii = 1), ∂L/∂z_i = w_i p_i / Σ_j w_ij p_ij − y_i renormalised, and
    ∂L/∂z_in = w_in p_in (negatives), p_ii − 1 literal.

    Reference written out on the logits ``Z = s·I·Tᵀ`` and chained to the features and ``s``.
    """
    img, txt = _features(b=6, d=8, seed=3)
    alpha, scale = 1.5, 9.0
    value, g_img, g_txt, g_log_scale, _ = _value_and_grads(
        OpenCLIPLossAdapter("ega", alpha=alpha, renormalize=renormalize),
        img,
        txt,
        log_scale=math.log(scale),
    )
    cos = img @ txt.T
    z = scale * cos
    b = z.shape[0]
    eye = torch.eye(b, dtype=torch.bool)

    def row_grads(logits):
        p = torch.softmax(logits, dim=1)
        weights = 1 + alpha * (p / p.diagonal()[:, None]).clamp(max=1.0)
        weights = weights.masked_fill(eye, 1.0)
        if renormalize:
            q = weights * p
            return q / q.sum(dim=1, keepdim=True) - eye.to(p.dtype)
        return torch.where(eye, p - 1.0, weights * p)

    grad_z = 0.5 / b * (row_grads(z) + row_grads(z.T).T)
    ref_value = 0.5 * (F.cross_entropy(z, torch.arange(b)) + F.cross_entropy(z.T, torch.arange(b)))
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(g_img, scale * grad_z @ txt)
    torch.testing.assert_close(g_txt, scale * grad_z.T @ img)
    # d/d log s = s · Σ G ⊙ cos
    torch.testing.assert_close(g_log_scale, scale * (grad_z * cos).sum())


def test_adapter_owns_no_trainable_parameters_and_keeps_its_buffers():
    """The temperature is the caller's: no trainable parameter, nothing of the module changes."""
    loss_fn = HardnegSigLipLoss()
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    img, txt = _features()
    _value_and_grads(loss_fn, img, txt, log_scale=math.log(5.0), bias=-1.0)
    assert not [p for p in loss_fn.parameters() if p.requires_grad]
    for key, value in loss_fn.state_dict().items():
        torch.testing.assert_close(value, before[key])
    # another scale gives another value: the argument is what is used
    a = loss_fn(img, txt, torch.tensor(5.0), torch.tensor(-1.0))
    b = loss_fn(img, txt, torch.tensor(20.0), torch.tensor(-1.0))
    assert not torch.isclose(a, b)


def test_output_dict_has_open_clips_key():
    img, txt = _features()
    out = HardnegClipLoss()(img, txt, torch.tensor(10.0), output_dict=True)
    assert list(out) == ["contrastive_loss"]
    assert out["contrastive_loss"].dim() == 0


def test_drop_in_accepts_open_clips_constructor_flags():
    """``open_clip.create_loss``'s keyword arguments construct the hardneg losses unchanged."""
    HardnegClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=0, world_size=1)
    HardnegSigLipLoss(rank=0, world_size=1, dist_impl="bidir")


def test_bad_arguments_raise_value_errors_that_say_what_to_do():
    img, txt = _features()
    with pytest.raises(ValueError, match="caller"):
        OpenCLIPLossAdapter("ega", temperature=0.05)
    with pytest.raises(ValueError, match="unknown loss"):
        OpenCLIPLossAdapter("clipp")
    with pytest.raises(ValueError, match="horovod"):
        HardnegClipLoss(use_horovod=True)
    with pytest.raises(ValueError, match="logit_scale must be finite and > 0"):
        HardnegClipLoss()(img, txt, torch.tensor(-1.0))
    with pytest.raises(ValueError, match="without a logit bias"):
        OpenCLIPLossAdapter("hcl")(img, txt, torch.tensor(10.0), torch.tensor(-1.0))
    with pytest.raises(ValueError, match="logit_bias"):
        HardnegSigLipLoss()(img, txt, torch.tensor(10.0))
    with pytest.raises(ValueError, match=r"torch\.distributed"):
        HardnegClipLoss(rank=1, world_size=2)(img, txt, torch.tensor(10.0))


# --------------------------------------------------------------------------- BNS hook


def _restricted_clip_reference(img, txt, scale, keep_i2t, keep_t2i):
    """Brute-force symmetric CE of each anchor over {its positive} ∪ {kept negatives}."""
    z = scale * img @ txt.T
    total = 0.0
    for logits, keep in ((z, keep_i2t), (z.T, keep_t2i)):
        for i in range(z.shape[0]):
            cols = [i] + [j for j in range(z.shape[1]) if keep[i, j] and j != i]
            total += float(torch.logsumexp(logits[i, cols], dim=0) - logits[i, i])
    return total / (2 * z.shape[0])


def test_bns_hook_restricts_the_loss_to_the_selected_negatives():
    img, txt = _features(b=8, seed=4)
    miner = BoundaryAwareMiner(BNSConfig(k=3))
    negatives = miner.mine_features(img, txt, progress=1.0, total=4.0)
    value = HardnegClipLoss("infonce")(img, txt, torch.tensor(12.0), negatives=negatives)
    ref = _restricted_clip_reference(img, txt, 12.0, negatives.i2t_keep, negatives.t2i_keep)
    assert value.item() == pytest.approx(ref, rel=1e-9)


def test_bns_hook_picks_k_distinct_negatives_and_never_a_positive():
    img, txt = _features(b=8, seed=5)
    ids = torch.tensor([0, 1, 1, 2, 3, 4, 4, 5])
    extra = F.normalize(torch.randn(8, 2, 16, dtype=torch.float64), dim=-1)
    miner = BoundaryAwareMiner(BNSConfig(k=4))
    sel = miner.mine_features(img, txt, ids, extra, progress=0.0, total=1.0)
    assert sel.i2t_keep.shape == (8, 8 + 16) and sel.t2i_keep.shape == (8, 8)
    for keep, indices in ((sel.i2t_keep, sel.i2t.indices), (sel.t2i_keep, sel.t2i.indices)):
        assert (keep.sum(dim=1) == 4).all()
        for i in range(8):
            picked = indices[i].tolist()
            assert len(set(picked)) == 4 and keep[i, picked].all()
            # no picked column is a caption/image with the anchor's id
            assert all(j >= 8 or ids[j] != ids[i] for j in picked)
    candidates = torch.cat([txt, extra.reshape(-1, 16)])
    torch.testing.assert_close(sel.hard_negative_texts(candidates), candidates[sel.i2t.indices])


def test_bns_hook_trains_its_policy_only_in_training_with_grad():
    img, txt = _features(b=8, seed=6)
    img.requires_grad_()
    miner = BoundaryAwareMiner(BNSConfig(k=2, lr=1e-2))
    weights = [p.detach().clone() for p in miner.policy_parameters()]
    with torch.no_grad():
        miner.mine_features(img, txt, progress=0.0, total=1.0)
    assert all(torch.equal(w, p) for w, p in zip(weights, miner.policy_parameters()))
    miner.mine_features(img, txt, progress=0.0, total=1.0)
    changed = [not torch.equal(w, p) for w, p in zip(weights, miner.policy_parameters())]
    assert any(changed)
    assert img.grad is None  # the selection never back-propagates into the features


def test_bns_hook_warns_when_the_curriculum_gets_no_progress():
    img, txt = _features()
    miner = BoundaryAwareMiner(BNSConfig(k=2))
    with pytest.warns(UserWarning, match="without progress"):
        miner.mine_features(img, txt)
    with pytest.raises(ValueError, match="together"):
        miner.mine_features(img, txt, progress=1.0)


def test_negatives_selected_on_another_batch_are_refused():
    img, txt = _features(b=8)
    negatives = BoundaryAwareMiner(BNSConfig(k=2)).mine_features(img, txt, progress=0.0, total=1.0)
    with pytest.raises(ValueError, match="same features"):
        HardnegClipLoss()(img[:6], txt[:6], torch.tensor(10.0), negatives=negatives)


# --------------------------------------------------------------------------- training


def _tiny_open_clip() -> open_clip.model.CLIP:
    return open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.model.CLIPVisionCfg(
            layers=1, width=32, patch_size=8, image_size=32, head_width=16
        ),
        text_cfg=open_clip.model.CLIPTextCfg(
            context_length=16, vocab_size=1000, width=32, heads=2, layers=1
        ),
        output_dict=True,
    )


@pytest.mark.parametrize("with_bns", [False, True])
def test_tiny_open_clip_trains_with_the_adapter(with_bns):
    """A few AdamW steps with EGA (± BNS hook) lower the loss of a fixed batch."""
    torch.manual_seed(0)
    model = _tiny_open_clip()
    images, texts = torch.randn(8, 3, 32, 32), torch.randint(0, 1000, (8, 16))
    loss_fn = HardnegClipLoss("ega", alpha=1.0)
    miner = BoundaryAwareMiner(BNSConfig(k=3)) if with_bns else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(loss_fn(**model(images, texts)))

    before = fixed_loss()
    for step in range(12):
        out = model(images, texts)
        negatives = None
        if miner is not None:
            negatives = miner.mine_features(
                out["image_features"], out["text_features"], progress=step, total=12
            )
        loss = loss_fn(**out, negatives=negatives)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        assert model.logit_scale.grad is not None  # the caller's temperature is trained
        optimizer.step()
    after = fixed_loss()
    assert after < 0.9 * before


@pytest.mark.slow
def test_open_clip_example_runs():
    result = run_example("open_clip_ega.py", "--max-steps", "2", "--bns", "2")
    assert result.returncode == 0, result.stderr
    assert "loss on a fixed batch" in result.stdout


def test_readme_import_of_the_open_clip_adapter_works():
    """README: ``from hardneg.models import OpenCLIPAdapter`` (the tower adapter)."""
    from hardneg.models import OpenCLIPAdapter
    from hardneg.models.open_clip import OpenCLIPAdapter as Defined

    assert OpenCLIPAdapter is Defined
