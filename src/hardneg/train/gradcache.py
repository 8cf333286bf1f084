r"""GradCache: a full-batch contrastive step whose encoder memory is that of one chunk.

Reference: Gao, Zhang, Han & Callan 2021, "Scaling Deep Contrastive Learning Batch Size under
Memory Limited Setup" (GradCache), §3. A contrastive loss couples every pair of the batch, so a
plain step keeps the activations of all ``B`` samples alive until backward. GradCache splits
the batch into chunks and runs three steps:

1. **embed**: every chunk through the encoders under ``torch.no_grad()`` (no graph kept),
   recording the RNG state before each chunk (:class:`RandomReplay`);
2. **cache**: concatenate the chunk embeddings, make them leaves with ``requires_grad``,
   compute the full-batch loss on them and back-propagate it to get ``∂L/∂embeddings`` (and
   the gradients of the loss's own parameters: temperature, SigLIP bias, a BNS policy);
3. **replay**: re-run each chunk *with* graph under its recorded RNG state (same dropout and
   augmentation draws) and back-propagate the cached gradient slice, ``emb.backward(g)``.

Because ``L`` depends on the encoder parameters θ only through the embeddings,
``∂L/∂θ = Σ_chunks (∂emb_c/∂θ)ᵀ ∂L/∂emb_c``, so the parameter gradient is the plain step's.

What is exact (equal to the plain full-batch step up to float summation order):

- every contrastive loss of :mod:`hardneg.losses` and its gradient, including NegCLIP extra
  negatives (pass their embeddings as a third tensor) and the loss's own parameters;
- BNS negative selection, because it runs inside ``loss_from_embeddings`` on the full batch
  (its Gumbel noise comes from the sampler's own generator, so it draws the same noise as the
  plain step; the policy loss, whose inputs are detached, gets its gradient in step 2);
- under DDP, the loss gathers the embeddings with
  :func:`~hardneg.losses.distributed.gather_with_grad`, so the cached gradient of the local
  embeddings already holds every rank's anchors' terms; pass ``no_sync=ddp_model.no_sync`` so
  DDP all-reduces once, in the last chunk's backward;
- the RNG stream: after the call the global RNG is where the plain step (chunks encoded in
  order, then the loss) leaves it, so later draws do not depend on the chunking.

What is per chunk: losses on cross-modal pairs (ITM, CLA, MLM) need the encoders' token
states, which only exist, with graph, during a chunk's replay. They go in ``chunk_loss``,
called in step 3 on each replayed chunk and back-propagated with it; such a term sees only the
chunk's own candidates (e.g. ITM's hardest negative is searched among the chunk's images), so
it equals the plain step's only with a single chunk. The step-2 outputs (e.g. a BNS selection
over the full batch) are passed to it, so it can use full-batch choices where it needs them.

AMP: run the call under ``torch.autocast`` (around it or inside ``encode``) and pass the
``GradScaler``: step 2 back-propagates ``scaler.scale(loss)``, so the cached gradients are
scaled and step 3 propagates them as they are; ``chunk_loss`` terms are scaled the same way.
``scaler.step(optimizer)`` then unscales and skips the step on overflow, as usual.

Cost: one extra encoder forward per step (step 1), about +1/3 of a plain step's compute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


class RandomReplay:
    """Snapshot of the CPU (and CUDA) RNG state; ``with replay:`` runs a block from it.

    On entry the global RNG is set to the snapshot; on exit the state outside the block is
    restored (``torch.random.fork_rng``), so a replayed block does not shift later draws.
    Replaying the snapshot taken before a chunk's first forward gives the second forward the
    same dropout masks and random augmentations (as ``torch.utils.checkpoint`` and
    sentence-transformers' ``RandContext`` do).

    Args:
        devices: CUDA device indices whose RNG is captured too; None: the current device when
            CUDA is initialised (the usual one-GPU-per-process DDP layout), else none.

    Example:
        >>> replay = RandomReplay()
        >>> a = torch.rand(3)
        >>> with replay:
        ...     b = torch.rand(3)
        >>> bool((a == b).all())
        True
    """

    def __init__(self, devices: Sequence[int] | None = None) -> None:
        if devices is None:
            cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
            devices = [torch.cuda.current_device()] if cuda else []
        self.devices = list(devices)
        self.cpu_state = torch.get_rng_state()
        self.cuda_states = [torch.cuda.get_rng_state(d) for d in self.devices]
        self._fork: AbstractContextManager | None = None

    def __enter__(self) -> RandomReplay:
        self._fork = torch.random.fork_rng(devices=self.devices)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        for device, state in zip(self.devices, self.cuda_states):
            torch.cuda.set_rng_state(state, device)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._fork is not None, "RandomReplay.__exit__ without __enter__"
        self._fork.__exit__(*exc)
        self._fork = None


@dataclass
class Chunk:
    """What ``encode(i)`` returns when ``chunk_loss`` needs more than the embeddings.

    Attributes:
        embeddings: the chunk's embeddings (e.g. image, text, extra negative captions), each
            with the chunk's rows first; these get the cached gradients.
        extra: anything else of the forward (token states for ITM/CLA/MLM) for ``chunk_loss``;
            ignored in step 1.
    """

    embeddings: tuple[Tensor, ...]
    extra: Any = None


@dataclass
class GradCacheResult:
    """Result of :func:`gradcache_backward` (everything detached).

    Attributes:
        loss: the full-batch loss (unscaled).
        outputs: the second value ``loss_from_embeddings`` returned (logs, a BNS selection), or
            None.
        embeddings: the full-batch embeddings, one tensor per output of ``encode`` (e.g. for
            GRIT/FALCON stores or logging).
        chunk_losses: the value of ``chunk_loss`` for each chunk (empty without it).
    """

    loss: Tensor
    outputs: Any
    embeddings: tuple[Tensor, ...]
    chunk_losses: list[Tensor] = field(default_factory=list)


Encoded = tuple[Tensor, ...] | Chunk
LossOutput = Tensor | tuple[Tensor, Any]


def _as_chunk(out: Encoded, index: int) -> Chunk:
    if isinstance(out, Chunk):
        chunk = out
    else:
        chunk = Chunk(tuple(out) if isinstance(out, tuple | list) else ())
    if not chunk.embeddings or not all(isinstance(t, Tensor) for t in chunk.embeddings):
        raise ValueError(
            f"encode({index}) must return a tuple of embedding tensors (or a Chunk), got "
            f"{type(out).__name__}"
        )
    return chunk


def _split_loss(out: LossOutput) -> tuple[Tensor, Any]:
    loss, outputs = out if isinstance(out, tuple) else (out, None)
    if not isinstance(loss, Tensor) or loss.dim() != 0 or not loss.requires_grad:
        raise ValueError(
            "loss_from_embeddings must return a scalar tensor computed from the embeddings "
            "(optionally with outputs: (loss, outputs))"
        )
    return loss, outputs


def _scaled(loss: Tensor, scaler: Any) -> Tensor:
    return loss if scaler is None else scaler.scale(loss)


def gradcache_backward(
    encode: Callable[[int], Encoded],
    n_chunks: int,
    loss_from_embeddings: Callable[..., LossOutput],
    *,
    scaler: Any = None,
    chunk_loss: Callable[[int, Chunk, Any], Tensor] | None = None,
    no_sync: Callable[[], AbstractContextManager] | None = None,
    replay: bool = True,
) -> GradCacheResult:
    """Back-propagate a full-batch loss chunk by chunk; leaves the gradients in ``.grad``.

    Args:
        encode: ``encode(i)`` runs the encoders on chunk ``i`` and returns its embeddings
            ``(image_emb, text_emb[, extra_text_emb, ...])`` (or a :class:`Chunk`). It is
            called twice per chunk (step 1 without grad, step 3 with), so it must be a
            deterministic function of the chunk index and the global RNG.
        n_chunks: number of chunks (≥ 1).
        loss_from_embeddings: ``loss(*embeddings)`` on the concatenated embeddings (the
            positional order of ``encode``'s outputs) → scalar, or ``(scalar, outputs)``.
            Selection (BNS), gathering (DDP) and the loss's own parameters live here.
        scaler: optional ``torch.amp.GradScaler``; the loss and chunk terms are scaled.
        chunk_loss: optional ``chunk_loss(i, chunk, outputs)`` → scalar added in step 3 on the
            replayed chunk (cross-modal terms; weight it yourself, e.g. by rows/B).
        no_sync: ``ddp_model.no_sync``: wraps every chunk's replay but the last, so DDP
            all-reduces the accumulated gradients once.
        replay: replay each chunk's RNG state in step 3 (False only to show why it is needed).

    Returns:
        :class:`GradCacheResult`.

    Raises:
        ValueError: ``n_chunks`` < 1, an ``encode`` output that is not a tuple of tensors or
            changes shape between the two passes, a non-scalar loss, or a loss that gives no
            embedding a gradient.

    Example:
        >>> from hardneg.losses import InfoNCELoss
        >>> enc, loss_fn = torch.nn.Linear(8, 4), InfoNCELoss()
        >>> x, y = torch.randn(12, 8), torch.randn(12, 4)
        >>> res = gradcache_backward(lambda i: (enc(x[4 * i : 4 * i + 4]), y[4 * i : 4 * i + 4]),
        ...                          3, loss_fn)
        >>> enc.weight.grad.shape, res.embeddings[0].shape
        (torch.Size([4, 8]), torch.Size([12, 4]))
    """
    if not isinstance(n_chunks, int) or n_chunks < 1:
        raise ValueError(f"n_chunks must be an int ≥ 1, got {n_chunks!r}")
    # step 1: embed every chunk without graph, recording the RNG state before each
    replays, parts = [], []
    with torch.no_grad():
        for i in range(n_chunks):
            replays.append(RandomReplay())
            parts.append(tuple(t.detach() for t in _as_chunk(encode(i), i).embeddings))
    if len({len(p) for p in parts}) != 1:
        raise ValueError("encode must return the same number of embeddings for every chunk")
    # step 2: full-batch loss on leaf embeddings → cached gradients
    leaves = tuple(torch.cat(group).requires_grad_(True) for group in zip(*parts))
    with torch.enable_grad():
        loss, outputs = _split_loss(loss_from_embeddings(*leaves))
        _scaled(loss, scaler).backward()
    if all(leaf.grad is None for leaf in leaves):
        raise ValueError("loss_from_embeddings gave no embedding a gradient; it must use them")
    rows = [[t.shape[0] for t in group] for group in zip(*parts)]
    grads = [
        None if leaf.grad is None else leaf.grad.split(sizes) for leaf, sizes in zip(leaves, rows)
    ]
    # step 3: replay each chunk with graph and push its cached gradient through the encoders
    chunk_values = []
    for i in range(n_chunks):
        last = i == n_chunks - 1
        with nullcontext() if last or no_sync is None else no_sync(), torch.enable_grad():
            with replays[i] if replay else nullcontext():
                chunk = _as_chunk(encode(i), i)
            tensors, tensor_grads = [], []
            for k, emb in enumerate(chunk.embeddings):
                if emb.shape != parts[i][k].shape:
                    raise ValueError(
                        f"encode({i}) output {k} has shape {tuple(emb.shape)} in the replay but "
                        f"{tuple(parts[i][k].shape)} in the first pass; encode must be "
                        "deterministic given the chunk index and the RNG"
                    )
                if grads[k] is not None and emb.requires_grad:
                    tensors.append(emb)
                    tensor_grads.append(grads[k][i].to(emb.dtype))
            if chunk_loss is not None:
                value = chunk_loss(i, chunk, outputs)
                chunk_values.append(value.detach())
                tensors.append(_scaled(value, scaler))
                tensor_grads.append(None)
            if tensors:
                torch.autograd.backward(tensors, tensor_grads)
    return GradCacheResult(
        loss=loss.detach(),
        outputs=outputs,
        embeddings=tuple(leaf.detach() for leaf in leaves),
        chunk_losses=chunk_values,
    )


def check_chunkable(model: torch.nn.Module) -> None:
    """ValueError if ``model`` has a BatchNorm layer in training mode.

    GradCache's exactness needs each row's embedding to depend on that row only: a BatchNorm
    layer normalises a chunk with the chunk's statistics (not the micro-batch's) and updates its
    running statistics once per chunk and pass, so the step would differ from the plain one.
    """
    norms = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training
    ]
    if norms:
        raise ValueError(
            f"optim.gradcache_chunk needs encoders whose rows are independent, but {norms[0]} is "
            "a BatchNorm layer in training (chunks would be normalised with their own batch "
            "statistics); use a LayerNorm tower (model.image_tower=vit) or optim.gradcache_chunk=0"
        )


def chunk_slices(batch_size: int, chunk_size: int) -> list[slice]:
    """Row slices of ``ceil(batch_size / chunk_size)`` chunks (the last may be shorter).

    Example:
        >>> chunk_slices(10, 4)
        [slice(0, 4, None), slice(4, 8, None), slice(8, 10, None)]
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int ≥ 1, got {chunk_size!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int ≥ 1, got {batch_size!r}")
    return [slice(s, min(s + chunk_size, batch_size)) for s in range(0, batch_size, chunk_size)]
