r"""Run open_clip's own training script (``open_clip_train``) with a hardneg loss and BNS miner.

Usage — hardneg's options first, then open_clip_train's own arguments, unchanged::

    python -m hardneg.integrations.open_clip_train \
        --hardneg-loss ega --hardneg-miner bns --hardneg-bns-arg k=8 \
        --train-data train.csv --dataset-type csv --model ViT-B-32 --accum-freq 2 ...

``open_clip_train`` ships inside the ``open_clip_torch`` wheel and needs ``webdataset`` and
``braceexpand`` (``pip install "hardneg[open_clip]"``). Its real ``main`` runs; hardneg adds:

- the loss: ``--hardneg-loss NAME`` (any name of :data:`hardneg.losses.LOSSES`) with
  ``--hardneg-loss-arg KEY=VALUE`` hyper-parameters (e.g. ``alpha=1.0``; EGA's
  ``renormalize=False`` selects the literal, unstable form — the default is ``EGALoss``'s),
  scored at the model's ``logit_scale``/``logit_bias`` by
  :class:`~hardneg.integrations.open_clip.OpenCLIPLossAdapter`;
- the miner: ``--hardneg-miner bns`` (``--hardneg-bns-arg KEY=VALUE`` for
  :class:`~hardneg.miners.BNSConfig` fields) selects ``k`` negatives per anchor with BACL's
  boundary-aware sampler (arXiv:2511.08399 §3) and trains its policy;
- progress: η = ``epoch + step / steps_per_epoch`` in optimiser steps, with open_clip's
  ``steps_per_epoch = num_batches // accum_freq``;
- gradient accumulation (``--accum-freq A``): open_clip calls the loss ``A`` times per
  optimiser step on the same accumulated batch (cached features, one micro-batch re-run with
  gradient). The negatives are selected once per optimiser step, on that accumulated batch,
  at its first call, and reused for the other ``A − 1``; the policy steps once;
- checkpoints: the miner state (policy, its Adam state, noise generator) is stored in
  open_clip's checkpoint under ``checkpoint["optimizer"]["hardneg_miner"]`` (a state-dict
  hook of the optimizer) and restored on ``--resume``;
- ``--hardneg-model-config PATH.json`` registers a model config file with
  ``open_clip.add_model_config`` (``--model`` is then its file name without ``.json``).

Hook points: ``open_clip_train`` has no plug-in interface, so for the duration of the call
(restored afterwards) this module replaces two names in ``open_clip_train.main``:
``create_loss`` (returns the hardneg loss) and ``train_one_epoch`` (wraps the original one to
pass the epoch geometry to the loss and, at the first epoch, to attach the checkpoint hook to
the optimizer and restore the miner). Not supported: distillation, CoCa, Horovod.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor, nn

from hardneg.integrations.open_clip import OpenCLIPLossAdapter
from hardneg.losses import LOSSES
from hardneg.miners import BNSConfig, BoundaryAwareMiner, MinedNegatives

logger = logging.getLogger(__name__)

#: Key of the miner state inside open_clip's ``checkpoint["optimizer"]``.
CHECKPOINT_KEY = "hardneg_miner"


class OpenClipTrainLoss(nn.Module):
    r"""The loss open_clip_train calls: a hardneg loss on all or on BNS-selected negatives.

    Call signature of open_clip's ``ClipLoss`` (``image_features, text_features, logit_scale,
    logit_bias=None, output_dict=False``). The training loop tells it the epoch geometry
    (:meth:`begin_epoch`); it counts its calls to know the optimiser step and the position in
    the accumulation window.

    Args:
        loss: the :class:`~hardneg.integrations.open_clip.OpenCLIPLossAdapter`.
        miner: optional :class:`~hardneg.miners.BoundaryAwareMiner`.
        accum_freq: open_clip's ``--accum-freq`` (loss calls per optimiser step).
    """

    def __init__(
        self,
        loss: OpenCLIPLossAdapter,
        miner: BoundaryAwareMiner | None = None,
        accum_freq: int = 1,
    ) -> None:
        super().__init__()
        if accum_freq < 1:
            raise ValueError(f"accum_freq must be ≥ 1 (open_clip's --accum-freq), got {accum_freq}")
        self.loss = loss
        self.miner = miner
        self.accum_freq = accum_freq
        self.epoch, self.steps_per_epoch, self.epochs = 0, 1, 1
        self.calls = 0
        self.negatives: MinedNegatives | None = None

    def begin_epoch(self, epoch: int, steps_per_epoch: int, epochs: int) -> None:
        """Begin epoch ``epoch`` (0-based) of ``epochs``, of ``steps_per_epoch`` optimiser steps."""
        if steps_per_epoch < 1:
            raise ValueError(
                f"an epoch has {steps_per_epoch} optimiser steps: the training set is smaller "
                "than --batch-size × --accum-freq; use more data or smaller batches"
            )
        self.epoch, self.steps_per_epoch, self.epochs = epoch, steps_per_epoch, epochs
        self.calls = 0

    @property
    def progress(self) -> float:
        """Training progress η in epochs at the current optimiser step."""
        return self.epoch + (self.calls // self.accum_freq) / self.steps_per_epoch

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor | None = None,
        output_dict: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """Loss of one call of open_clip's training loop (see class docstring)."""
        negatives = None
        if self.miner is not None and torch.is_grad_enabled():
            if self.calls % self.accum_freq == 0:  # first call of an optimiser step
                self.negatives = self.miner.mine_features(
                    image_features,
                    text_features,
                    progress=self.progress,
                    total=self.epochs,
                    logit_scale=logit_scale,
                )
            negatives = self.negatives
            self.calls += 1
        return self.loss(
            image_features, text_features, logit_scale, logit_bias, output_dict, negatives=negatives
        )

    def state_dict_hook(self, optimizer: torch.optim.Optimizer, state: dict) -> dict:
        """Optimizer state-dict post-hook: add the miner state under :data:`CHECKPOINT_KEY`."""
        if self.miner is not None:
            state[CHECKPOINT_KEY] = self.miner.state_dict()
        return state


def _literal(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare string, e.g. curriculum=default


def parse_hardneg_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """hardneg's options and the remaining (open_clip_train) arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m hardneg.integrations.open_clip_train",
        description="open_clip_train with a hardneg loss and BNS miner; other arguments go to "
        "open_clip_train unchanged",
    )
    parser.add_argument("--hardneg-loss", default="ega", choices=sorted(LOSSES))
    parser.add_argument("--hardneg-loss-arg", action="append", type=_literal, default=[])
    parser.add_argument("--hardneg-miner", default="none", choices=["none", "bns"])
    parser.add_argument("--hardneg-bns-arg", action="append", type=_literal, default=[])
    parser.add_argument("--hardneg-model-config", action="append", default=[])
    options, rest = parser.parse_known_args(list(argv))
    known = {f.name for f in fields(BNSConfig)}
    unknown = sorted({key for key, _ in options.hardneg_bns_arg} - known)
    if unknown:
        parser.error(
            f"--hardneg-bns-arg {unknown} not BNSConfig fields; choose from {sorted(known)}"
        )
    if options.hardneg_bns_arg and options.hardneg_miner != "bns":
        parser.error("--hardneg-bns-arg needs --hardneg-miner bns")
    return options, rest


class _Hooks:
    """The two replacements of ``open_clip_train.main``'s names (see module docstring)."""

    def __init__(self, options: argparse.Namespace, train_one_epoch: Any) -> None:
        self.options = options
        self.original_train_one_epoch = train_one_epoch
        self.loss: OpenClipTrainLoss | None = None
        self.attached = False

    def create_loss(self, args: argparse.Namespace) -> OpenClipTrainLoss:
        if args.distill or "coca" in args.model.lower() or args.horovod:
            raise ValueError(
                "hardneg's open_clip_train entry point supports CLIP/SigLIP contrastive training "
                "only: drop --distill-model, --horovod or the CoCa --model"
            )
        adapter = OpenCLIPLossAdapter(
            self.options.hardneg_loss,
            rank=args.rank,
            world_size=args.world_size,
            **dict(self.options.hardneg_loss_arg),
        )
        miner = None
        if self.options.hardneg_miner == "bns":
            miner = BoundaryAwareMiner(BNSConfig(**dict(self.options.hardneg_bns_arg)))
        self.loss = OpenClipTrainLoss(adapter, miner, args.accum_freq).to(args.device)
        return self.loss

    def train_one_epoch(
        self, model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, **kwargs
    ) -> Any:
        """open_clip_train's ``train_one_epoch``, after telling the loss the epoch geometry."""
        steps = data["train"].dataloader.num_batches // args.accum_freq
        loss.begin_epoch(epoch, steps, args.epochs)
        if not self.attached:
            optimizer.register_state_dict_post_hook(loss.state_dict_hook)
            self._restore(loss, args)
            self.attached = True
        return self.original_train_one_epoch(
            model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, **kwargs
        )

    @staticmethod
    def _restore(loss: OpenClipTrainLoss, args: argparse.Namespace) -> None:
        if loss.miner is None or args.resume is None:
            return
        from open_clip_train.file_utils import pt_load

        checkpoint = pt_load(args.resume, map_location="cpu")
        if "epoch" not in checkpoint:
            return  # a bare model checkpoint: fine-tuning starts a fresh miner
        state = checkpoint.get("optimizer", {}).get(CHECKPOINT_KEY)
        if state is None:
            raise ValueError(
                f"--resume {args.resume} holds no BNS miner state (trained without "
                "--hardneg-miner bns?): resuming would silently restart the policy; resume a "
                "checkpoint of a BNS run, or start from it as a bare model checkpoint"
            )
        loss.miner.load_state_dict(state)
        logger.info("hardneg: restored the BNS miner state from %s", args.resume)


@contextlib.contextmanager
def _patched(module: Any, **names: Any) -> Iterator[None]:
    saved = {name: getattr(module, name) for name in names}
    for name, value in names.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def main(argv: Sequence[str] | None = None) -> OpenClipTrainLoss | None:
    """Run ``open_clip_train.main.main`` with hardneg's loss/miner; returns the loss used."""
    import open_clip
    import open_clip_train.main as oc_main

    options, rest = parse_hardneg_args(argv if argv is not None else sys.argv[1:])
    for path in options.hardneg_model_config:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--hardneg-model-config {path} is not a file")
        open_clip.add_model_config(path)
    hooks = _Hooks(options, oc_main.train_one_epoch)
    with _patched(oc_main, create_loss=hooks.create_loss, train_one_epoch=hooks.train_one_epoch):
        oc_main.main(rest)
    return hooks.loss


if __name__ == "__main__":
    main()
