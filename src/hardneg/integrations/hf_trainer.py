r"""A ``transformers.Trainer`` that trains a ``CLIPModel`` with a hardneg contrastive loss.

:class:`HardnegCLIPTrainer` overrides ``compute_loss(model, inputs, return_outputs=False,
num_items_in_batch=None)`` (transformers 5.x signature): it runs the model with
``return_loss=False``, takes the normalised ``image_embeds``/``text_embeds`` and returns the
hardneg loss of them (optionally on BACL-selected negatives).

The loss owns trainable parameters (its temperature ``logit_scale``, SigLIP's bias) that the
model does not. They reach the optimiser through :meth:`HardnegCLIPTrainer.create_optimizer`,
which adds them as one extra parameter group (no weight decay, the run's learning rate) to
the optimiser the Trainer builds for the model — the model stays a plain ``CLIPModel``
(``save_pretrained``/``from_pretrained`` unchanged), the scheduler sees the group because it
is created after the optimiser. The loss state is saved next to each checkpoint
(``hardneg_loss.pt``) and restored by ``train(resume_from_checkpoint=...)``, so a resumed run
continues with the learned temperature; with a BNS miner the same file holds its policy,
Adam state and noise generator, so a resumed run draws the same negatives as an uninterrupted
one. The model's own ``logit_scale`` is not used (it gets no gradient; the Trainer's AdamW
skips it).

With a miner: negatives are selected per micro-batch and the policy steps once per
optimiser step under gradient accumulation; ``evaluate()`` scores every negative
(deterministic); a short last batch gets ``k`` clipped with a logged warning (see
:class:`~hardneg.integrations.callbacks.BNSProgressCallback` and
:class:`~hardneg.miners.MinedLoss`). For retrieval metrics
pass ``compute_metrics=RetrievalMetrics()``: ``compute_loss`` returns the embeddings as the
outputs the Trainer gathers.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from hardneg.integrations.callbacks import BNSProgressCallback
from hardneg.integrations.retrieval import RetrievalMetrics
from hardneg.losses.base import ContrastiveLoss
from hardneg.miners import BoundaryAwareMiner, MinedLoss

__all__ = ["LOSS_STATE_FILE", "HardnegCLIPTrainer", "RetrievalMetrics"]

#: File holding the loss (and miner) state in an output or checkpoint directory.
LOSS_STATE_FILE = "hardneg_loss.pt"


class HardnegCLIPTrainer(Trainer):
    r"""``transformers.Trainer`` for ``CLIPModel`` (or any model returning ``image_embeds`` and
    ``text_embeds``) with a hardneg loss.

    Per step: ``out = model(pixel_values, input_ids, attention_mask, return_loss=False)``,
    ``loss = L(out.image_embeds, out.text_embeds, positive_ids=inputs.get("labels"))`` with
    ``L`` the hardneg loss, scored on every in-batch negative or, with ``miner``, on the
    ``k`` negatives BACL's boundary-aware sampler picks per anchor (arXiv:2511.08399 §3).

    Args:
        *args: as ``transformers.Trainer`` (``model``, ``args``, ``train_dataset``, ...).
        loss: the :class:`~hardneg.losses.ContrastiveLoss` (e.g. ``EGALoss()``); its trainable
            parameters are optimised with the model (see module docstring).
        miner: optional :class:`~hardneg.miners.BoundaryAwareMiner`;
            a :class:`BNSProgressCallback` added here keeps its progress up to date and steps
            its policy once per optimiser step; its state is saved in ``hardneg_loss.pt``.
        **kwargs: as ``transformers.Trainer``.

    Dataset columns: ``pixel_values``, ``input_ids`` (optionally ``attention_mask``) and,
    optionally, an integer ``label`` column (the collator passes it as ``labels``) used as
    semantic ids: pairs sharing a label are positives of each other (several captions of one
    image, duplicates).

    Example:
        ::

            trainer = HardnegCLIPTrainer(
                model=CLIPModel(config), args=TrainingArguments("out", max_steps=100),
                train_dataset=ds, loss=EGALoss(alpha=1.0),
            )
            trainer.train()
    """

    #: the loss is a per-batch mean: the Trainer divides it by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        loss: ContrastiveLoss,
        miner: BoundaryAwareMiner | None = None,
        **kwargs: Any,
    ) -> None:
        custom = kwargs.get("optimizers", (None, None))[0]
        if custom is not None:
            given = {id(p) for group in custom.param_groups for p in group["params"]}
            if any(id(p) not in given for p in loss.parameters() if p.requires_grad):
                raise ValueError(
                    "the optimizer passed in optimizers=(...) does not hold the loss's trainable "
                    "parameters (its temperature); add loss.parameters() to it, or build the "
                    "loss with learn_temperature=False"
                )
        super().__init__(*args, **kwargs)
        # CLIPModel's return_loss defaults to None, so the Trainer would skip the eval loss
        self.can_return_loss = True
        self.criterion = MinedLoss(loss, miner).to(self.args.device)
        if miner is not None:
            self.add_callback(BNSProgressCallback(miner, checkpoint=False))

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """Hardneg loss of the model's normalised embeddings (``num_items_in_batch`` unused:
        a contrastive loss averages over anchors of the batch).

        With ``return_outputs`` (evaluation) the outputs are ``{"image_embeds", "text_embeds"}``
        only, which the Trainer gathers over the eval set for ``compute_metrics``.
        """
        for key in ("pixel_values", "input_ids"):
            if key not in inputs:
                raise KeyError(
                    f"HardnegCLIPTrainer needs a {key!r} column in the dataset, got "
                    f"{sorted(inputs)}; keep remove_unused_columns=True or name it {key!r}"
                )
        outputs = model(
            pixel_values=inputs["pixel_values"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs.get("attention_mask"),
            return_loss=False,
        )
        value = self.criterion(
            outputs.image_embeds, outputs.text_embeds, positive_ids=inputs.get("labels")
        )
        if return_outputs:
            return value, {"image_embeds": outputs.image_embeds, "text_embeds": outputs.text_embeds}
        return value

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimiser for the model, plus one group with the loss's parameters.

        An optimiser given as ``optimizers=(...)`` is used as is (it must hold them).
        """
        created = self.optimizer is None
        optimizer = super().create_optimizer(model)
        params = [p for p in self.criterion.loss.parameters() if p.requires_grad]
        if created and params:
            optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        return optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model as the Trainer does, and the loss state as ``hardneg_loss.pt``."""
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            torch.save(self.criterion.state_dict(), os.path.join(output_dir, LOSS_STATE_FILE))

    def load_loss_state(self, directory: str) -> None:
        """Restore the loss (and miner) state saved in ``directory``."""
        path = os.path.join(directory, LOSS_STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: the checkpoint was not written by HardnegCLIPTrainer; "
                "resume from one of its checkpoints (or start without resume_from_checkpoint)"
            )
        state = torch.load(path, map_location=self.args.device, weights_only=True)
        self.criterion.load_state_dict(state)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train``; on resume, the loss state of the checkpoint is restored first."""
        if resume_from_checkpoint:
            directory = resume_from_checkpoint
            if resume_from_checkpoint is True:
                directory = get_last_checkpoint(self.args.output_dir)
                if directory is None:
                    raise ValueError(
                        f"resume_from_checkpoint=True but {self.args.output_dir} holds no "
                        "checkpoint; train without resuming first"
                    )
            self.load_loss_state(str(directory))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
