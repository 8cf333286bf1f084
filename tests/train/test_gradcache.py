"""GradCache == the plain full-batch step: parameter, temperature and policy gradients.

The plain reference is written out here with ordinary autograd: the same chunks encoded with
graph (so dropout draws the same masks from the same seed), concatenated, the loss, one
``backward()``. With dropout off it is also compared to one forward of the whole batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from hardneg.losses import LOSSES, InfoNCELoss
from hardneg.miners import BNSConfig, BoundaryAwareMiner, MinedLoss
from hardneg.train.gradcache import Chunk, RandomReplay, chunk_slices, gradcache_backward
from tests.helpers.ddp import run_distributed

pytestmark = pytest.mark.usefixtures("one_thread")

B, CHUNK, VOCAB, K = 16, 4, 40, 2


class TinyDual(nn.Module):
    """MLP image tower + embedding-bag text tower, both with dropout."""

    def __init__(self, p: float = 0.3, d: int = 8) -> None:
        super().__init__()
        self.image = nn.Sequential(
            nn.Flatten(), nn.Linear(48, 32), nn.GELU(), nn.Dropout(p), nn.Linear(32, d)
        )
        self.bag = nn.EmbeddingBag(VOCAB, 24, mode="mean")
        self.text = nn.Sequential(nn.Dropout(p), nn.Linear(24, d))

    def encode_text(self, tokens):
        return self.text(self.bag(tokens))

    def forward(self, images, tokens, extra_tokens=None):
        out = (self.image(images), self.encode_text(tokens))
        if extra_tokens is None:
            return out
        rows = extra_tokens.shape[0]
        extra = self.encode_text(extra_tokens.reshape(rows * K, -1)).reshape(rows, K, -1)
        return (*out, extra)


def make_batch(n: int = B):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, 4, 4, generator=g)
    tokens = torch.randint(0, VOCAB, (n, 5), generator=g)
    extra = torch.randint(0, VOCAB, (n, K, 5), generator=g)
    return images, tokens, extra


def make_model(p: float = 0.3) -> TinyDual:
    torch.manual_seed(0)
    return TinyDual(p)


def make_loss(case: str):
    """(loss module, callable on the embeddings, uses extra negatives)."""
    torch.manual_seed(5)  # BNS policy init
    if case == "bns":
        miner = BoundaryAwareMiner(BNSConfig(k=3, seed=0))
        miner.set_progress(1.0, 4.0)
        miner.defer_policy_step = True  # keep the policy gradient for the comparison
        crit = MinedLoss(InfoNCELoss(), miner)
        return crit, crit, False
    if case == "negclip":
        loss = LOSSES["negclip"]()
        return loss, with_extra(loss), True
    loss = LOSSES[case]()
    return loss, loss, False


def with_extra(loss):
    """The loss on (image, text, extra negative captions) given positionally."""
    return lambda u, v, e: loss(u, v, extra_text_emb=e)


def encoder(model, batch, use_extra, slices):
    images, tokens, extra = batch

    def encode(i):
        s = slices[i]
        return model(images[s], tokens[s], extra[s] if use_extra else None)

    return encode


def grads(*modules):
    return {
        f"{m}.{n}": p.grad.clone()
        for m, module in enumerate(modules)
        for n, p in module.named_parameters()
        if p.grad is not None
    }


def plain_step(model, fn, batch, use_extra, seed, slices):
    """The reference: chunks encoded with graph, concatenated, one loss, one backward."""
    torch.manual_seed(seed)
    encode = encoder(model, batch, use_extra, slices)
    outs = [encode(i) for i in range(len(slices))]
    loss = fn(*(torch.cat(group) for group in zip(*outs)))
    loss.backward()
    return loss.detach()


def gc_step(model, fn, batch, use_extra, seed, slices, **kw):
    torch.manual_seed(seed)
    encode = encoder(model, batch, use_extra, slices)
    return gradcache_backward(encode, len(slices), fn, **kw)


def run_both(case, p=0.3, **kw):
    batch, slices = make_batch(), chunk_slices(B, CHUNK)
    results = []
    for step in (plain_step, gc_step):
        model = make_model(p)
        module, fn, use_extra = make_loss(case)
        out = step(model, fn, batch, use_extra, 7, slices, **({} if step is plain_step else kw))
        results.append((out, grads(model, module), torch.get_rng_state()))
    return results


def assert_same_grads(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=1e-5), name


@pytest.mark.parametrize("case", ["infonce", "siglip", "ega", "negclip", "bns"])
def test_gradcache_equals_full_batch_step(case):
    (plain_loss, plain, plain_rng), (res, cached, gc_rng) = run_both(case)
    assert torch.allclose(res.loss, plain_loss, atol=1e-6)
    assert_same_grads(cached, plain)
    # the loss's own parameters: temperature (and SigLIP's bias), BNS policy
    assert any("logit_scale" in n for n in cached)
    if case == "siglip":
        assert any("logit_bias" in n for n in cached)
    if case == "bns":
        assert any("policy" in n for n in cached)  # the policy gets its gradient in step 2
    # the RNG stream continues where the plain step leaves it
    assert torch.equal(gc_rng, plain_rng)


def test_gradcache_without_dropout_equals_one_forward_of_the_batch():
    batch = make_batch()
    model, loss = make_model(p=0.0), InfoNCELoss()
    img, txt = model(batch[0], batch[1])
    loss(img, txt).backward()
    expected = grads(model, loss)
    model, loss = make_model(p=0.0), InfoNCELoss()
    gc_step(model, loss, batch, False, 0, chunk_slices(B, CHUNK))
    assert_same_grads(grads(model, loss), expected)


def test_without_rng_replay_dropout_masks_differ_and_so_do_the_grads():
    (_, plain, _), (_, cached, _) = run_both("infonce", replay=False)
    differ = [n for n in plain if not torch.allclose(plain[n], cached[n], atol=1e-5)]
    assert any(n.startswith("0.") for n in differ)  # encoder grads are wrong without replay
    (_, plain, _), (_, cached, _) = run_both("infonce", replay=True)
    assert_same_grads(cached, plain)


def test_chunk_loss_hook_adds_per_chunk_terms():
    """A per-chunk term on encoder states (e.g. ITM) is added to the cached contrastive loss."""
    batch, slices = make_batch(), chunk_slices(B, CHUNK)
    images, tokens, _ = batch

    def hidden(model, s):
        return model.image[:3](images[s])  # a token-state stand-in with graph

    def term(h):
        return 0.1 * h.pow(2).mean()

    model, loss = make_model(), InfoNCELoss()
    torch.manual_seed(3)
    embs, extra_terms = [], []
    for s in slices:
        embs.append(model(images[s], tokens[s]))
        extra_terms.append(term(hidden(model, s)))
    total = loss(*(torch.cat(g) for g in zip(*embs))) + sum(extra_terms)
    total.backward()
    expected = grads(model, loss)

    model, loss = make_model(), InfoNCELoss()
    seen = []

    def encode(i):
        s = slices[i]
        return Chunk(model(images[s], tokens[s]), extra=hidden(model, s))

    def chunk_loss(i, chunk, outputs):
        seen.append(outputs)
        return term(chunk.extra)

    torch.manual_seed(3)
    res = gradcache_backward(
        encode, len(slices), lambda u, v: (loss(u, v), "out"), chunk_loss=chunk_loss
    )
    assert seen == ["out"] * len(slices) and len(res.chunk_losses) == len(slices)
    assert torch.allclose(res.loss + sum(res.chunk_losses), total.detach(), atol=1e-6)
    assert_same_grads(grads(model, loss), expected)


def test_amp_scaled_cached_grads():
    """Under bf16 autocast with a GradScaler: GradCache == the plain AMP step, both scaled."""
    batch, slices, scale = make_batch(), chunk_slices(B, CHUNK), 2.0**8
    runs = []
    for use_gc in (False, True):
        model, loss = make_model(), InfoNCELoss()
        scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        encode = encoder(model, batch, False, slices)
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if use_gc:
                gradcache_backward(encode, len(slices), loss, scaler=scaler)
            else:
                outs = [encode(i) for i in range(len(slices))]
                scaler.scale(loss(*(torch.cat(g) for g in zip(*outs)))).backward()
        runs.append(grads(model, loss))
    plain, cached = runs
    model, loss = make_model(), InfoNCELoss()
    plain_step(model, loss, batch, False, 7, slices)
    fp32 = grads(model, loss)
    for name in plain:
        assert torch.allclose(cached[name], plain[name], rtol=2e-2, atol=1e-3 * scale), name
        # scaled by the scaler's factor: unscaled, close to the fp32 gradient
        cos = nn.functional.cosine_similarity(
            cached[name].flatten() / scale, fp32[name].flatten(), 0
        )
        norm = cached[name].norm() / scale / fp32[name].norm()
        assert cos > 0.98 and 0.9 < norm < 1.1, name


def test_random_replay_restores_outer_state():
    torch.manual_seed(0)
    replay = RandomReplay()
    first = torch.rand(4)
    after = torch.get_rng_state()
    with replay:
        assert torch.equal(torch.rand(4), first)
    assert torch.equal(torch.get_rng_state(), after)


def test_bad_arguments_raise():
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="n_chunks"):
        gradcache_backward(lambda i: (lin(x), lin(x)), 0, InfoNCELoss())
    with pytest.raises(ValueError, match="tuple of embedding tensors"):
        gradcache_backward(lambda i: lin(x), 1, InfoNCELoss())
    with pytest.raises(ValueError, match="scalar"):
        gradcache_backward(lambda i: (lin(x), lin(x)), 1, lambda u, v: u.sum(1))
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_slices(4, 0)


# ---- DDP: 2 gloo ranks, 8 local rows each, chunks of 4 ----------------------------------

WORLD = 2


def _average(module):
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= WORLD


def _ddp_worker(rank, world):
    from torch.nn.parallel import DistributedDataParallel as DDP

    batch = tuple(t[rank * 8 : (rank + 1) * 8] for t in make_batch())
    slices = chunk_slices(8, CHUNK)
    out = {}
    # (a) same per-rank global RNG: GradCache under DDP vs the plain 2-rank step
    model, loss = make_model(), InfoNCELoss()
    ddp = DDP(model)
    gc_step(ddp, with_extra(loss), batch, True, 100 + rank, slices, no_sync=ddp.no_sync)
    _average(loss)
    out["gc"] = grads(model, loss)
    model, loss = make_model(), InfoNCELoss()
    plain_step(model, with_extra(loss), batch, True, 100 + rank, slices)
    _average(model)
    _average(loss)
    out["plain"] = grads(model, loss)
    # (b) each chunk seeded by its global index: comparable with one process
    model, loss = make_model(), InfoNCELoss()
    ddp = DDP(model)
    encode = seeded_encoder(ddp, batch, offset=rank * len(slices), slices=slices)
    gradcache_backward(encode, len(slices), with_extra(loss), no_sync=ddp.no_sync)
    _average(loss)
    out["seeded"] = grads(model, loss)
    return out


def seeded_encoder(model, batch, offset, slices):
    inner = encoder(model, batch, True, slices)

    def encode(i):
        torch.manual_seed(1000 + offset + i)
        return inner(i)

    return encode


@pytest.mark.slow
def test_ddp_gradcache_equals_plain_ddp_and_single_process():
    ranks = run_distributed(_ddp_worker, WORLD)
    for r in ranks:
        assert_same_grads(r["gc"], r["plain"])
    assert_same_grads(ranks[0]["gc"], ranks[1]["gc"])
    # one process, whole batch of 16, same per-chunk dropout seeds, plain backward
    model, loss = make_model(), InfoNCELoss()
    slices = chunk_slices(B, CHUNK)
    encode = seeded_encoder(model, make_batch(), 0, slices)
    outs = [encode(i) for i in range(len(slices))]
    with_extra(loss)(*(torch.cat(g) for g in zip(*outs))).backward()
    single = grads(model, loss)
    for r in ranks:
        assert_same_grads(r["seeded"], single)
