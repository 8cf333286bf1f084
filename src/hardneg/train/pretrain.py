"""The shared pre-training stage: InfoNCE on the dual encoder, once per data build, cached.

NegCLIP (Yuksekgonul et al. 2023, §4) and BACL (arXiv:2511.08399, §4) fine-tune a CLIP that
already knows objects; a hard-negative method has nothing to work with while the towers are
still learning what a digit is. So, with ``pretrain.steps > 0``, the dual encoder (image tower
and both heads; the text tower stays frozen) first trains with plain InfoNCE on random batches,
and every method starts from that state. The stage depends only on the data, the model's tower
and head settings and its own config — not on the method or the run's seed — so its result is
cached on disk (keyed by a fingerprint of all of those) and shared by every run of a bench.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from hardneg.data.atomic_files import atomic_write
from hardneg.data.cache import content_fingerprint, module_fingerprint
from hardneg.losses.infonce import InfoNCELoss
from hardneg.models.dual import DualEncoder
from hardneg.train.config import DataConfig, ModelConfig, PretrainConfig

PRETRAIN_VERSION = 1  # bump when the stage's computation changes, so old caches are not reused
_CROSSMODAL_FIELDS = ("crossmodal_dim", "crossmodal_layers", "crossmodal_heads", "dropout")


def trainable_state(dual: DualEncoder) -> dict[str, Tensor]:
    """The dual encoder's state without the frozen text tower (reloaded from its package)."""
    return {k: v for k, v in dual.state_dict().items() if not k.startswith("text_tower.")}


def pretrain_key(
    data: DataConfig, model: ModelConfig, pretrain: PretrainConfig, dual: DualEncoder
) -> str:
    """Fingerprint of everything the stage's result depends on."""
    towers = {k: v for k, v in dataclasses.asdict(model).items() if k not in _CROSSMODAL_FIELDS}
    towers.pop("freeze_image_tower")
    data_fields = dataclasses.asdict(data)
    for name in ("cache_dir", "encode_all", "hard_negative_captions", "positives"):
        data_fields.pop(name)
    return content_fingerprint(
        PRETRAIN_VERSION,
        data_fields,
        towers,
        dataclasses.asdict(pretrain),
        module_fingerprint(dual.text_tower),
    )


def pretrain_dual_encoder(
    dual: DualEncoder,
    images: Tensor,
    caption_rows: Tensor,
    bank: Any,
    config: PretrainConfig,
    cache_dir: str | Path | None,
    key: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``dual`` with InfoNCE for ``config.steps`` (or load the cached result) in place.

    Args:
        dual: a freshly built dual encoder (its initial state is part of the run's seed).
        images: (N, 3, H, W) uint8 training images.
        caption_rows: (N, C) text-bank rows of each image's captions (one drawn per step).
        bank: the :class:`~hardneg.train.textbank.TextBank` of the frozen text tower.
        config: the stage's settings.
        cache_dir: where ``pretrain/<key>.pt`` is kept (None: no cache).
        key: :func:`pretrain_key` of the run.
        progress: show a progress bar.

    Returns:
        ``{"state": trainable state, "loss": last-10-step mean InfoNCE loss, "cached": bool}``.
        The global random state is the same afterwards as before (the stage draws from its own
        seed), so a run is identical whether the stage was computed or read from the cache.
    """
    path = None if cache_dir is None else Path(cache_dir) / "pretrain" / f"{key}.pt"
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        dual.load_state_dict(saved["state"], strict=False)
        return {**saved, "cached": True}
    with torch.random.fork_rng(devices=[]):  # the run's own random stream is left untouched
        result = _train(dual, images, caption_rows, bank, config, progress)
    if path is not None:
        atomic_write(path, lambda f: torch.save(result, f))
    return {**result, "cached": False}


def _train(
    dual: DualEncoder,
    images: Tensor,
    caption_rows: Tensor,
    bank: Any,
    config: PretrainConfig,
    progress: bool,
) -> dict[str, Any]:
    device = dual.device
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    loss_fn = InfoNCELoss().to(device)
    params = [p for p in dual.parameters() if p.requires_grad] + list(loss_fn.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.05)
    warm = max(1, config.steps // 20)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, config.steps - warm)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    n, n_caps = caption_rows.shape
    batch = min(config.batch_size, n)
    losses: list[float] = []
    dual.train()
    for _ in tqdm(range(config.steps), desc="pre-training", disable=not progress, leave=False):
        idx = torch.randperm(n, generator=gen)[:batch]
        rows = caption_rows[idx, torch.randint(0, n_caps, (batch,), generator=gen)]
        image_emb, _ = dual.encode_image(images[idx].to(device).float().div_(255.0))
        text_emb, _ = dual.encode_text(bank.take(rows, device))
        loss = loss_fn(image_emb, text_emb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    dual.eval()
    return {"state": trainable_state(dual), "loss": sum(losses[-10:]) / max(1, len(losses[-10:]))}
