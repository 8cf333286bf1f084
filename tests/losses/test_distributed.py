"""Each loss under 2 gloo ranks == the same loss on the concatenated batch in one process."""

from __future__ import annotations

import pytest
import torch

from hardneg.losses import EGALoss, HCLLoss, InfoNCELoss, NegCLIPLoss, SigLIPLoss
from tests.helpers.ddp import run_distributed

B, D, WORLD = 8, 6, 2

CASES = {
    "infonce": (InfoNCELoss, {}, False, False),
    "infonce_ids": (InfoNCELoss, {}, True, False),
    "infonce_chunked": (InfoNCELoss, {"chunk_size": 3}, True, False),
    "negclip": (NegCLIPLoss, {}, False, True),
    "siglip": (SigLIPLoss, {}, True, False),
    "ega": (EGALoss, {"alpha": 1.0}, False, False),
    "ega_chunked_extra": (EGALoss, {"alpha": 1.0, "chunk_size": 5}, True, True),
    "hcl": (HCLLoss, {}, True, False),
}


def _inputs():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(WORLD * B, D, generator=g, dtype=torch.float64)
    v = torch.randn(WORLD * B, D, generator=g, dtype=torch.float64)
    extra = torch.randn(WORLD * B, 2, D, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 10, (WORLD * B,), generator=g)
    return u, v, extra, ids


def _run(loss_fn, u, v, extra, ids, use_ids, use_extra):
    u, v = u.clone().requires_grad_(True), v.clone().requires_grad_(True)
    extra = extra.clone().requires_grad_(True)
    loss = loss_fn(
        u, v, positive_ids=ids if use_ids else None, extra_text_emb=extra if use_extra else None
    )
    loss.backward()
    params = {n: p.grad.clone() for n, p in loss_fn.named_parameters()}
    return {"loss": loss.detach(), "gu": u.grad, "gv": v.grad, "ge": extra.grad, **params}


def _worker(rank, world):
    u, v, extra, ids = _inputs()
    sl = slice(rank * B, (rank + 1) * B)
    return {
        case: _run(cls(**kw).double(), u[sl], v[sl], extra[sl], ids[sl], use_ids, use_extra)
        for case, (cls, kw, use_ids, use_extra) in CASES.items()
    }


@pytest.fixture(scope="module")
def rank_results():
    """One 2-process run computes every case (spawning costs seconds per run)."""
    return run_distributed(_worker, WORLD)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_ddp_two_ranks_match_single_process(case, rank_results):
    cls, kw, use_ids, use_extra = CASES[case]
    single = _run(cls(**kw).double(), *_inputs(), use_ids, use_extra)
    ranks = [r[case] for r in rank_results]
    # the mean over ranks of the loss equals the single-process loss
    mean_loss = sum(r["loss"] for r in ranks) / WORLD
    assert torch.allclose(mean_loss, single["loss"], atol=1e-12)
    # each rank's input gradient is WORLD x the single-process one (DDP's averaging removes it)
    for key in ("gu", "gv", "ge") if use_extra else ("gu", "gv"):
        got = torch.cat([r[key] for r in ranks]) / WORLD
        assert torch.allclose(got, single[key], atol=1e-12), key
    # parameter (temperature, bias) gradients, averaged over ranks as DDP does
    for name in ("logit_scale", "logit_bias"):
        if name in single:
            got = sum(r[name] for r in ranks) / WORLD
            assert torch.allclose(got, single[name], atol=1e-12), name
