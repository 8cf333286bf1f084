"""Hostile-user fuzz of every loss: bad constructors, bad inputs, double backward.

Every case must end in a ``ValueError`` whose message names the offending argument, or in a
finite result that is correct (checked against an independent formula or finite differences).
A NaN, an unrelated library error or a message that does not say which argument is wrong fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from hardneg.losses import (
    LOSSES,
    ContrastiveLocalAttentionLoss,
    ContrastiveLoss,
    EGALoss,
    InfoNCELoss,
    contrastive_local_attention_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")

#: Every loss variant: the registry, the blockwise paths and EGA's renormalised gradient.
VARIANTS: dict[str, Callable[..., ContrastiveLoss]] = {
    **LOSSES,
    "infonce_chunked": lambda **kw: InfoNCELoss(chunk_size=3, **kw),
    "ega_chunked": lambda **kw: EGALoss(chunk_size=3, **kw),
    "ega_renormalize": lambda **kw: EGALoss(renormalize=True, **kw),
}
NEEDS_EXTRA = {"negclip"}
CHUNKED = {"infonce_chunked", "ega_chunked"}
AMPLIFIED = {"ega", "ega_chunked", "ega_renormalize"}

BAD_NUMBERS = [0.0, -1.0, math.inf, -math.inf, math.nan, "0.07", None, True]
BAD_BOOLS = ["yes", None, 1.5]


def _ctor_cases() -> list[tuple[str, str, object]]:
    """(variant, argument, bad value) for every hyper-parameter of every variant."""
    common = {
        "temperature": BAD_NUMBERS,
        "max_logit_scale": [0.0, -1.0, math.nan, -math.inf, "100", None, True],
        "learn_temperature": BAD_BOOLS,
        "normalize": BAD_BOOLS,
    }
    extra: dict[str, dict[str, list[object]]] = {
        "infonce": {"chunk_size": [2.5, 0, -3, True, "4"], "aggregate": ["max", 1, None]},
        "ega": {
            "alpha": [-1.0, math.inf, math.nan, "1", None, True],
            "hardness_temperature": [0.0, -0.1, math.inf, math.nan, "0.1", True],
            "renormalize": BAD_BOOLS,
            "chunk_size": [2.5, 0, True],
        },
        "siglip": {"bias": [math.nan, math.inf, "-10", None, True]},
        "hcl": {
            "beta": [-1.0, math.inf, math.nan, "1", None, True],
            "tau_plus": [1.0, -0.1, math.nan, math.inf, "0.1", None, True],
        },
        "dcl": {"tau_plus": [1.0, -0.1, math.nan, "0.1", None]},
        "soft_infonce": {"weight_temperature": [0.0, -1.0, math.inf, math.nan, "1", None, True]},
    }
    extra["negclip"] = extra["infonce"]
    cases = []
    for name in LOSSES:
        for arg, values in {**common, **extra.get(name, {})}.items():
            cases += [(name, arg, value) for value in values]
    return cases


def _raises_naming(arg: str, fn: Callable[[], object]) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    message = str(info.value)
    assert arg in message, f"error does not name {arg!r}: {info.type.__name__}: {message}"
    assert "\n" not in message.strip(), f"error is not one line: {message}"


@pytest.mark.parametrize("name,arg,value", _ctor_cases(), ids=lambda x: repr(x)[:20])
def test_bad_constructor_argument_is_named(name, arg, value):
    _raises_naming(arg, lambda: LOSSES[name](**{arg: value}))


@pytest.mark.parametrize(
    "arg,value",
    [(a, v) for a in ("rho", "beta", "eps") for v in (0.0 if a != "beta" else -1.0, math.inf)]
    + [("rho", 1.5), ("rho", math.nan), ("beta", math.nan), ("eps", math.nan)]
    + [(a, v) for a in ("rho", "beta", "eps") for v in ("0.1", None, True)],
)
def test_bad_cla_argument_is_named(arg, value):
    _raises_naming(arg, lambda: ContrastiveLocalAttentionLoss(**{arg: value}))
    pos = torch.softmax(torch.randn(2, 3, 4), -1)
    mask = torch.ones(2, 3, dtype=torch.bool)
    _raises_naming(arg, lambda: contrastive_local_attention_loss(pos, pos, mask, **{arg: value}))


def _attn(*shape: int) -> torch.Tensor:
    return torch.softmax(torch.randn(*shape, generator=torch.Generator().manual_seed(4)), -1)


CLA_INPUT_CASES: list[tuple[str, str, Callable[[], tuple]]] = [
    ("neg_meta", "attn_neg", lambda: (_attn(2, 3, 4), _attn(2, 3, 4).to("meta"), None)),
    ("pos_list", "attn_pos", lambda: (_attn(2, 3, 4).tolist(), _attn(2, 3, 4), None)),
    ("mask_list", "token_mask", lambda: (_attn(2, 3, 4), _attn(2, 3, 4), [[True] * 3] * 2)),
    ("mask_meta", "token_mask", lambda: (_attn(2, 3, 4), _attn(2, 3, 4), "meta")),
    ("mask_int", "token_mask", lambda: (_attn(2, 3, 4), _attn(2, 3, 4), torch.ones(2, 3))),
    ("neg_nan", "attn_neg", lambda: (_attn(2, 3, 4), _attn(2, 3, 4) * math.nan, None)),
    ("neg_shape", "attn_neg", lambda: (_attn(2, 3, 4), _attn(2, 3, 5), None)),
    ("pos_2d", "attn_pos", lambda: (_attn(3, 4), _attn(2, 3, 4), None)),
]


@pytest.mark.parametrize("case,arg,make", CLA_INPUT_CASES, ids=[c[0] for c in CLA_INPUT_CASES])
def test_bad_cla_input_is_named(case, arg, make):
    pos, neg, mask = make()
    if mask is None or isinstance(mask, str):
        mask = torch.ones(2, 3, dtype=torch.bool, device=mask)
    _raises_naming(arg, lambda: ContrastiveLocalAttentionLoss()(pos, neg, mask))


# ------------------------------------------------------------------------------------ inputs

B, D = 6, 8


def _u():
    return torch.randn(B, D, generator=torch.Generator().manual_seed(0))


def _v():
    return torch.randn(B, D, generator=torch.Generator().manual_seed(1))


def _extra():
    return torch.randn(B, 2, D, generator=torch.Generator().manual_seed(2))


def _nan_at(x: torch.Tensor, value: float) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[3] = value
    return x


#: (case, argument the error must name, kwargs of the call)
INPUT_CASES: list[tuple[str, str, Callable[[], dict]]] = [
    ("image_1d", "image_emb", lambda: dict(image_emb=_u()[0], text_emb=_v()[0])),
    ("image_3d", "image_emb", lambda: dict(image_emb=_u()[None], text_emb=_v())),
    ("image_0d", "image_emb", lambda: dict(image_emb=torch.tensor(1.0), text_emb=_v())),
    ("image_int", "image_emb", lambda: dict(image_emb=_u().long(), text_emb=_v())),
    ("image_complex", "image_emb", lambda: dict(image_emb=_u().to(torch.cfloat), text_emb=_v())),
    ("text_bool", "text_emb", lambda: dict(image_emb=_u(), text_emb=_v() > 0)),
    ("image_list", "image_emb", lambda: dict(image_emb=_u().tolist(), text_emb=_v())),
    ("text_none", "text_emb", lambda: dict(image_emb=_u(), text_emb=None)),
    ("batch_1", "image_emb", lambda: dict(image_emb=_u()[:1], text_emb=_v()[:1])),
    ("batch_0", "image_emb", lambda: dict(image_emb=_u()[:0], text_emb=_v()[:0])),
    ("dim_0", "image_emb", lambda: dict(image_emb=_u()[:, :0], text_emb=_v()[:, :0])),
    ("rows_differ", "text_emb", lambda: dict(image_emb=_u(), text_emb=_v()[:4])),
    ("cols_differ", "text_emb", lambda: dict(image_emb=_u(), text_emb=_v()[:, :5])),
    ("image_nan", "image_emb", lambda: dict(image_emb=_nan_at(_u(), math.nan), text_emb=_v())),
    ("image_inf", "image_emb", lambda: dict(image_emb=_nan_at(_u(), math.inf), text_emb=_v())),
    ("text_-inf", "text_emb", lambda: dict(image_emb=_u(), text_emb=_nan_at(_v(), -math.inf))),
    ("text_meta", "text_emb", lambda: dict(image_emb=_u(), text_emb=_v().to("meta"))),
    ("image_meta", "image_emb", lambda: dict(image_emb=_u().to("meta"), text_emb=_v())),
    ("ids_short", "positive_ids", lambda: dict(positive_ids=torch.arange(B - 1))),
    ("ids_2d", "positive_ids", lambda: dict(positive_ids=torch.arange(B)[None])),
    ("ids_float", "positive_ids", lambda: dict(positive_ids=torch.arange(B).double())),
    ("ids_bool", "positive_ids", lambda: dict(positive_ids=torch.ones(B, dtype=torch.bool))),
    ("ids_str", "positive_ids", lambda: dict(positive_ids="012345")),
    ("ids_floats", "positive_ids", lambda: dict(positive_ids=[0.5] * B)),
    ("ids_meta", "positive_ids", lambda: dict(positive_ids=torch.arange(B, device="meta"))),
    ("extra_1d", "extra_text_emb", lambda: dict(extra_text_emb=torch.randn(D))),
    ("extra_4d", "extra_text_emb", lambda: dict(extra_text_emb=torch.randn(B, 1, 1, D))),
    ("extra_dim", "extra_text_emb", lambda: dict(extra_text_emb=torch.randn(B, 2, D - 1))),
    ("extra_nan", "extra_text_emb", lambda: dict(extra_text_emb=_nan_at(_extra(), math.nan))),
    ("extra_int", "extra_text_emb", lambda: dict(extra_text_emb=_extra().long())),
    ("extra_list", "extra_text_emb", lambda: dict(extra_text_emb=_extra().tolist())),
    ("extra_meta", "extra_text_emb", lambda: dict(extra_text_emb=_extra().to("meta"))),
]


def _call(name: str, **kw) -> torch.Tensor:
    args = dict(image_emb=_u(), text_emb=_v())
    if name in NEEDS_EXTRA:
        args["extra_text_emb"] = _extra()
    args.update(kw)
    return VARIANTS[name]()(**args)


@pytest.mark.parametrize("case,arg,make", INPUT_CASES, ids=[c[0] for c in INPUT_CASES])
@pytest.mark.parametrize("name", VARIANTS)
def test_bad_input_is_named(name, case, arg, make):
    _raises_naming(arg, lambda: _call(name, **make()))


def _reference_loss(name: str, u, v, ids, extra, scale: float) -> torch.Tensor | None:
    """Independent value for the cases below (InfoNCE family only; others: finiteness)."""
    if name not in ("infonce", "negclip", "infonce_chunked") and name not in AMPLIFIED:
        return None
    u, v = F.normalize(u.double(), dim=-1), F.normalize(v.double(), dim=-1)
    if extra is not None:
        extra = F.normalize(extra.reshape(-1, D).double(), dim=-1)
    cands = v if extra is None else torch.cat([v, extra])
    ids = torch.arange(B) if ids is None else ids
    total = 0.0
    for anchors, others, n_true in ((u, cands, B), (v, u, B)):
        z = scale * anchors @ others.T
        same = torch.zeros_like(z, dtype=torch.bool)
        same[:, :n_true] = ids[:, None] == ids[None, :]
        lse_pos = torch.logsumexp(z.masked_fill(~same, -math.inf), 1) - same.sum(1).log()
        denom = torch.logsumexp(
            torch.stack([lse_pos, z.masked_fill(same, -math.inf).logsumexp(1)]), 0
        )
        total = total + 0.5 * (denom - lse_pos).mean()
    return total


#: Extreme but legal inputs: the loss must be finite (and right where a reference exists).
EDGE_CASES: list[tuple[str, Callable[[], dict]]] = [
    ("zero_rows", lambda: dict(image_emb=_u().index_fill(0, torch.tensor([0, 2]), 0.0))),
    ("huge_norm", lambda: dict(image_emb=_u() * 1e15, text_emb=_v() * 1e-15)),
    ("all_same_id", lambda: dict(positive_ids=torch.zeros(B, dtype=torch.long))),
    ("ids_list", lambda: dict(positive_ids=[0, 0, 1, 2, 3, 3])),
    ("ids_int32", lambda: dict(positive_ids=torch.tensor([5, 1, 5, 2, 9, 0], dtype=torch.int32))),
    ("fp16", lambda: dict(image_emb=(_u() * 1e4).half(), text_emb=_v().half())),
    ("identical", lambda: dict(image_emb=_u()[:1].expand(B, D), text_emb=_u()[:1].expand(B, D))),
    ("batch_2", lambda: dict(image_emb=_u()[:2], text_emb=_v()[:2])),
]


@pytest.mark.parametrize("case,make", EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
@pytest.mark.parametrize("name", VARIANTS)
def test_edge_input_gives_finite_correct_loss(name, case, make):
    kw = make()
    if name in NEEDS_EXTRA and kw.get("image_emb", _u()).shape[0] != B:
        kw["extra_text_emb"] = _extra()[:2]
    kw["image_emb"] = kw.get("image_emb", _u()).detach().clone().requires_grad_(True)
    loss = _call(name, **kw)
    assert torch.isfinite(loss), f"{name}/{case}: loss {loss}"
    (grad,) = torch.autograd.grad(loss, kw["image_emb"])
    assert torch.isfinite(grad).all(), f"{name}/{case}: non-finite gradient"
    ids = kw.get("positive_ids")
    ids = None if ids is None else torch.as_tensor(ids).long()
    extra = kw.get("extra_text_emb", _extra() if name in NEEDS_EXTRA else None)
    text = kw.get("text_emb", _v())
    if case in ("fp16", "batch_2") or (extra is not None and extra.shape[0] != text.shape[0]):
        return
    ref = _reference_loss(name, kw["image_emb"].detach(), text, ids, extra, 1 / 0.07)
    if ref is not None:
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)


def test_reference_loss_matches_open_clip():
    """The test's own reference agrees with open_clip's ClipLoss (distinct ids)."""
    u, v = _u(), _v()
    expected = ClipLoss()(F.normalize(u, dim=-1), F.normalize(v, dim=-1), 1 / 0.07)
    ref = _reference_loss("infonce", u, v, None, None, 1 / 0.07)
    assert ref.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name", VARIANTS)
def test_unnormalized_inputs_whose_logits_overflow_are_named(name):
    loss_fn = VARIANTS[name](normalize=False)
    extra = {"extra_text_emb": _extra()} if name in NEEDS_EXTRA else {}
    _raises_naming("image_emb", lambda: loss_fn(_u() * 1e20, _v(), **extra))
    # unit-norm features with normalize=False are fine and equal the normalising loss
    u, v = F.normalize(_u(), dim=-1), F.normalize(_v(), dim=-1)
    if name in NEEDS_EXTRA:
        extra = {"extra_text_emb": F.normalize(_extra(), dim=-1)}
    expected = VARIANTS[name]()(u, v, **extra)
    assert loss_fn(u, v, **extra).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", LOSSES)
def test_temperature_whose_scale_overflows_is_named(name):
    _raises_naming("temperature", lambda: LOSSES[name](temperature=1e-40, max_logit_scale=math.inf))
    # clamped by the default max_logit_scale it is legal: the scale is the clamp
    assert LOSSES[name](temperature=1e-40).scale().item() == pytest.approx(100.0)


@pytest.mark.parametrize("name", VARIANTS)
def test_meta_inputs_infer_the_shape_and_a_meta_loss_is_named(name):
    meta = dict(image_emb=_u().to("meta"), text_emb=_v().to("meta"))
    if name in NEEDS_EXTRA:
        meta["extra_text_emb"] = _extra().to("meta")
    loss = VARIANTS[name]()(**meta)
    assert loss.shape == () and loss.device.type == "meta"
    cpu = {key: value.new_empty(value.shape, device="cpu").normal_() for key, value in meta.items()}
    loss_on_meta = VARIANTS[name]().to("meta")
    _raises_naming("logit_scale", lambda: loss_on_meta(**cpu))


def test_non_finite_temperature_parameter_is_reported():
    loss_fn = InfoNCELoss()
    with torch.no_grad():
        loss_fn.logit_scale.fill_(math.nan)
    _raises_naming("logit_scale", lambda: loss_fn(_u(), _v()))


# ---------------------------------------------------------------------------- double backward


def _grad_norm(loss_fn, x, y, **kw) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss_fn(x, y, **kw), x, create_graph=True)
    return g.norm()


#: Soft-InfoNCE's and mnrl_hardness's weights are detached by definition, so their gradient is
#: not the derivative of their value and finite differences of the gradient norm see the
#: weights move: checked apart (mnrl_hardness in test_loss_hardness.py).
DETACHED_WEIGHTS = {"soft_infonce", "mnrl_hardness"}
DOUBLE_BACKWARD = [n for n in VARIANTS if n not in CHUNKED | AMPLIFIED | DETACHED_WEIGHTS]


@pytest.mark.parametrize("with_ids", [False, True])
@pytest.mark.parametrize("name", DOUBLE_BACKWARD)
def test_double_backward_matches_finite_differences(name, with_ids):
    """∇ₓ‖∇ₓL‖ by autograd equals central differences of ‖∇ₓL‖ (float64)."""
    loss_fn = VARIANTS[name]().double()
    x, y = _u().double().requires_grad_(True), _v().double()
    kw = {"positive_ids": torch.tensor([0, 1, 1, 2, 3, 3])} if with_ids else {}
    if name in NEEDS_EXTRA:
        kw["extra_text_emb"] = _extra().double()
    _grad_norm(loss_fn, x, y, **kw).backward()
    direction = torch.randn(B, D, generator=torch.Generator().manual_seed(3), dtype=torch.double)
    eps = 1e-5
    plus = _grad_norm(loss_fn, (x + eps * direction).detach().requires_grad_(True), y, **kw)
    minus = _grad_norm(loss_fn, (x - eps * direction).detach().requires_grad_(True), y, **kw)
    numeric = (plus - minus).item() / (2 * eps)
    assert (x.grad * direction).sum().item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_double_backward_equals_open_clip():
    """Gradient-norm penalty through InfoNCE equals the same through open_clip's ClipLoss."""
    x, y = _u().double().requires_grad_(True), _v().double()
    loss_fn = InfoNCELoss(learn_temperature=False).double()
    _grad_norm(loss_fn, x, y).backward()
    ours = x.grad.clone()
    x.grad = None
    clip = ClipLoss()
    (g,) = torch.autograd.grad(
        clip(F.normalize(x, dim=-1), F.normalize(y, dim=-1), loss_fn.scale()),
        x,
        create_graph=True,
    )
    g.norm().backward()
    torch.testing.assert_close(ours, x.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CHUNKED | AMPLIFIED))
def test_double_backward_unsupported_says_what_to_do(name):
    x = _u().requires_grad_(True)
    hint = "chunk_size=None" if name in CHUNKED else "alpha=0"
    with pytest.raises(RuntimeError, match=f"double backward.*{hint}"):
        _grad_norm(VARIANTS[name](), x, _v()).backward()
