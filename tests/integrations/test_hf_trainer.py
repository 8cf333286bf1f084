"""transformers integration: HardnegCLIPTrainer on a tiny CLIPModel, BNSProgressCallback."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import CLIPConfig, CLIPModel, TrainerState, TrainingArguments

from hardneg.integrations.callbacks import BNSProgressCallback
from hardneg.integrations.hf_trainer import LOSS_STATE_FILE, HardnegCLIPTrainer, RetrievalMetrics
from hardneg.losses import EGALoss, InfoNCELoss
from hardneg.miners import BNSConfig, BoundaryAwareMiner
from tests.helpers.bns_record import adam_steps, assert_same_state, record_selections
from tests.helpers.examples import run_example


def _tiny_clip(seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 100,
            "max_position_embeddings": 16,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=32,
    )
    return CLIPModel(config)


def _pairs(rows: int = 16, seed: int = 0, labels: list[int] | None = None) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, 100, (rows, 12), generator=g)
    input_ids[:, -1] = 1  # EOS, where CLIP pools the text
    data = {
        "pixel_values": torch.randn(rows, 3, 32, 32, generator=g).numpy(),
        "input_ids": input_ids.numpy(),
    }
    if labels is not None:
        data["label"] = labels
    return Dataset.from_dict(data).with_format("torch")


def _args(tmp_path: Path, **overrides) -> TrainingArguments:
    options = dict(
        output_dir=str(tmp_path),
        max_steps=5,
        per_device_train_batch_size=8,
        learning_rate=2e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    options.update(overrides)
    return TrainingArguments(**options)


def _batch(ds: Dataset) -> dict[str, torch.Tensor]:
    return dict(ds[:])  # every row, as tensors


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 5-step EGA run that writes a checkpoint; returns what the tests look at."""
    out = tmp_path_factory.mktemp("hf_run")
    ds = _pairs(16)
    model, loss = _tiny_clip(), EGALoss(alpha=1.0)
    trainer = HardnegCLIPTrainer(
        model=model,
        args=_args(out, save_strategy="steps", save_steps=5),
        train_dataset=ds,
        loss=loss,
    )
    fixed = _batch(ds)
    with torch.no_grad():
        before = float(trainer.compute_loss(model, fixed))
    scale_before = loss.logit_scale.item()
    model_scale_before = model.logit_scale.item()
    trainer.train()
    with torch.no_grad():
        after = float(trainer.compute_loss(model, fixed))
    return SimpleNamespace(
        trainer=trainer,
        out=out,
        loss=loss,
        model=model,
        before=before,
        after=after,
        scale_before=scale_before,
        model_scale_before=model_scale_before,
        history=[log["loss"] for log in trainer.state.log_history if "loss" in log],
    )


def test_trainer_lowers_the_hardneg_loss_of_a_fixed_batch(trained):
    assert len(trained.history) == 5
    assert all(torch.isfinite(torch.tensor(trained.history)))
    assert trained.after < 0.9 * trained.before


def test_the_loss_temperature_is_trained_and_the_models_is_not_used(trained):
    assert trained.loss.logit_scale.item() != trained.scale_before
    # CLIPModel's own logit_scale takes no part in the hardneg loss: no gradient, no update
    assert trained.model.logit_scale.item() == trained.model_scale_before


def test_optimizer_holds_the_loss_parameters_in_an_extra_group(trained):
    groups = trained.trainer.optimizer.param_groups
    assert groups[-1]["params"] == [trained.loss.logit_scale]
    assert groups[-1]["weight_decay"] == 0.0
    in_groups = {id(p) for group in groups[:-1] for p in group["params"]}
    assert all(id(p) in in_groups for p in trained.model.parameters() if p.requires_grad)


def test_resume_restores_the_learned_loss_temperature(trained, tmp_path):
    checkpoint = trained.out / "checkpoint-5"
    assert (checkpoint / LOSS_STATE_FILE).is_file()
    fresh = EGALoss(alpha=1.0)
    trainer = HardnegCLIPTrainer(
        model=_tiny_clip(),
        args=_args(trained.out),
        train_dataset=_pairs(16),
        loss=fresh,
    )
    trainer.train(resume_from_checkpoint=True)  # already at max_steps: only restores
    assert fresh.logit_scale.item() == trained.loss.logit_scale.item()
    with pytest.raises(FileNotFoundError, match=LOSS_STATE_FILE):
        trainer.load_loss_state(str(tmp_path))


def test_evaluate_reports_the_loss_of_the_eval_set(trained):
    ds = _pairs(8, seed=1)
    metrics = trained.trainer.evaluate(ds)
    with torch.no_grad():
        expected = float(trained.trainer.compute_loss(trained.model, _batch(ds)))
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)


def test_compute_loss_equals_clips_own_loss_at_the_same_temperature(tmp_path):
    """InfoNCE on image_embeds/text_embeds == CLIPModel(return_loss=True).loss (same scale)."""
    model = _tiny_clip(seed=1)
    loss = InfoNCELoss()
    with torch.no_grad():
        loss.logit_scale.copy_(model.logit_scale)
    trainer = HardnegCLIPTrainer(model=model, args=_args(tmp_path), loss=loss)
    batch = _batch(_pairs(8, seed=2))
    with torch.no_grad():
        ours = trainer.compute_loss(model, batch)
        reference = model(**batch, return_loss=True).loss
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_label_column_makes_pairs_with_one_id_positives_of_each_other(tmp_path):
    """Reference: multi-positive InfoNCE (log-mean-exp of the positives) written out."""
    model = _tiny_clip(seed=2)
    loss = InfoNCELoss()
    trainer = HardnegCLIPTrainer(model=model, args=_args(tmp_path), loss=loss)
    ids = [0, 0, 1, 2, 3, 3, 3, 4]
    batch = _batch(_pairs(8, seed=3, labels=ids))
    batch["labels"] = batch.pop("label")  # as the default collator renames it
    with torch.no_grad():
        ours = float(trainer.compute_loss(model, batch))
        out = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"])
        z = loss.scale() * out.image_embeds @ out.text_embeds.T
    same = torch.tensor(ids)[:, None] == torch.tensor(ids)[None, :]
    total = 0.0
    for logits in (z, z.T):
        for i in range(8):
            pos, neg = logits[i][same[i]], logits[i][~same[i]]
            z_pos = torch.logsumexp(pos, 0) - math.log(len(pos))
            total += float(F.softplus(torch.logsumexp(neg, 0) - z_pos))
    assert ours == pytest.approx(total / 16, rel=1e-5)


def test_a_custom_optimizer_without_the_loss_parameters_is_refused(tmp_path):
    model = _tiny_clip()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"loss\.parameters"):
        HardnegCLIPTrainer(
            model=model, args=_args(tmp_path), loss=EGALoss(), optimizers=(optimizer, None)
        )


def test_missing_pixel_values_raise_a_key_error_naming_the_column(tmp_path):
    model = _tiny_clip()
    trainer = HardnegCLIPTrainer(model=model, args=_args(tmp_path), loss=InfoNCELoss())
    with pytest.raises(KeyError, match="pixel_values"):
        trainer.compute_loss(model, {"input_ids": torch.ones(2, 4, dtype=torch.long)})


def test_trainer_with_bns_miner_trains_the_policy_and_follows_progress(tmp_path):
    miner = BoundaryAwareMiner(BNSConfig(k=3, lr=1e-2))
    policy_before = [p.detach().clone() for p in miner.policy_parameters()]
    trainer = HardnegCLIPTrainer(
        model=_tiny_clip(),
        args=_args(tmp_path, max_steps=3),
        train_dataset=_pairs(16),
        loss=EGALoss(),
        miner=miner,
    )
    assert any(isinstance(cb, BNSProgressCallback) for cb in trainer.callback_handler.callbacks)
    trainer.train()
    # 16 rows / batch 8 = 2 steps per epoch; the last of 3 steps starts at step 2 = epoch 1
    assert (miner.progress, miner.total) == (1.0, 1.5)
    policy_after = miner.policy_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(policy_before, policy_after))


def test_progress_callback_counts_epochs_in_optimizer_steps():
    miner = BoundaryAwareMiner(BNSConfig(k=2))
    callback = BNSProgressCallback(miner)
    state = TrainerState(global_step=3, max_steps=10)
    args = SimpleNamespace(gradient_accumulation_steps=2)
    callback.on_step_begin(args, state, None, train_dataloader=list(range(8)))
    assert (miner.progress, miner.total) == (0.75, 2.5)  # 4 optimiser steps per epoch
    callback.on_step_begin(args, state, None, train_dataloader=iter(range(8)))
    assert (miner.progress, miner.total) == (0.3, 1.0)  # unsized: the run is one epoch
    with pytest.raises(ValueError, match="BoundaryAwareMiner"):
        BNSProgressCallback(EGALoss())


@pytest.mark.slow
def test_hf_clip_trainer_example_runs():
    result = run_example("hf_clip_trainer.py", "--max-steps", "2", "--bns", "2")
    assert result.returncode == 0, result.stderr
    assert "training loss" in result.stdout


# --------------------------------------------------------------------------- BNS in real loops


def _bns_trainer(tmp_path: Path, rows: int = 16, k: int = 3, **overrides) -> HardnegCLIPTrainer:
    return HardnegCLIPTrainer(
        model=_tiny_clip(),
        args=_args(tmp_path, **overrides),
        train_dataset=_pairs(rows),
        loss=EGALoss(),
        miner=BoundaryAwareMiner(BNSConfig(k=k, lr=1e-2)),
    )


def test_evaluation_with_bns_is_deterministic_and_scores_every_negative(tmp_path):
    """Three evaluate() calls on the same weights give one eval loss: the full-batch EGA loss."""
    trainer = _bns_trainer(tmp_path, max_steps=1)
    trainer.train()
    ds = _pairs(8, seed=1)
    losses = [trainer.evaluate(ds)["eval_loss"] for _ in range(3)]
    assert losses[0] == losses[1] == losses[2]
    with torch.no_grad():
        out = trainer.model(**_batch(ds))
        full = trainer.criterion.loss(out.image_embeds, out.text_embeds)  # every negative
    assert losses[0] == pytest.approx(float(full), rel=1e-5)


def test_gradient_accumulation_steps_the_policy_once_per_optimizer_step(tmp_path, monkeypatch):
    """GA=2, 3 optimiser steps: one selection per micro-batch (6), 3 policy steps, η per step."""
    record = record_selections(monkeypatch)
    trainer = _bns_trainer(
        tmp_path, max_steps=3, per_device_train_batch_size=4, gradient_accumulation_steps=2
    )
    trainer.train()
    assert len(record) == 6
    # 16 rows / batch 4 = 4 micro-batches = 2 optimiser steps per epoch
    assert [r["progress"] for r in record] == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    # Adam of the policy has stepped once per optimiser step before each micro-batch
    assert [r["adam"][:1] for r in record] == [[], [], [1.0], [1.0], [2.0], [2.0]]
    assert adam_steps(trainer.criterion.miner) == [3.0] * 4


def test_short_last_batch_clips_k_with_a_logged_warning(tmp_path, caplog):
    """20 rows, batch 8, k=6: the last batch of 4 rows has 3 candidates per row → k=3 there."""
    trainer = _bns_trainer(tmp_path, rows=20, k=6, num_train_epochs=1, max_steps=-1)
    with caplog.at_level("WARNING", logger="hardneg.miners.bns"):
        trainer.train()
    assert trainer.state.global_step == 3
    assert any("picking k=3 instead of k=6" in r.getMessage() for r in caplog.records)


def test_resume_mid_training_continues_the_selector_exactly(tmp_path, monkeypatch):
    """Resume at step 2 of 4: the miner state at step 3 equals the uninterrupted run's, and
    so do the negatives it picks."""
    record = record_selections(monkeypatch)
    _bns_trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2).train()
    uninterrupted = record[:]
    record.clear()
    _bns_trainer(tmp_path, max_steps=4).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert len(record) == 2
    assert record[0]["adam"] == [2.0] * 4  # restored after 2 policy steps, not a fresh policy
    for resumed, original in zip(record, uninterrupted[2:]):
        assert_same_state(resumed, original)
    picked = [r["selection"].i2t.indices for r in record]
    assert all(
        torch.equal(a, b["selection"].i2t.indices) for a, b in zip(picked, uninterrupted[2:])
    )


def test_compute_metrics_gives_multi_positive_retrieval_of_the_eval_set(tmp_path):
    """Reference: R@1 / mAP counted by hand from the eval embeddings (ids: 2 captions/image)."""
    model = _tiny_clip(seed=3)
    trainer = HardnegCLIPTrainer(
        model=model,
        args=_args(tmp_path, label_names=["labels"], per_device_eval_batch_size=4),
        loss=InfoNCELoss(),
        compute_metrics=RetrievalMetrics(ks=(1, 2)),
    )
    ids = [0, 0, 1, 1, 2, 2, 3, 3]
    ds = _pairs(8, seed=4, labels=ids)
    metrics = trainer.evaluate(ds)
    with torch.no_grad():
        out = model(pixel_values=ds[:]["pixel_values"], input_ids=ds[:]["input_ids"])
    sim = out.image_embeds @ out.text_embeds.T
    same = torch.tensor(ids)[:, None] == torch.tensor(ids)[None, :]
    for name, s in (("i2t", sim), ("t2i", sim.T)):
        order = s.argsort(dim=1, descending=True)
        hits = same.gather(1, order).float()  # relevance in rank order
        r1 = 100 * hits[:, 0].mean()
        ap = (hits.cumsum(1) / torch.arange(1, 9) * hits).sum(1) / hits.sum(1)
        assert metrics[f"eval_{name}_R@1"] == pytest.approx(float(r1), abs=1e-4)
        assert metrics[f"eval_{name}_mAP"] == pytest.approx(float(100 * ap.mean()), abs=1e-3)


def test_retrieval_metrics_without_labels_take_pair_i_as_row_is_positive():
    """No label column (the Trainer passes an empty tuple): the diagonal pairs are positives."""
    from transformers import EvalPrediction

    img = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0], [0.9, 1.0]]), dim=-1)
    metrics = RetrievalMetrics(ks=(1,))
    for labels in ((), None):
        out = metrics(EvalPrediction(predictions=(img.numpy(), txt.numpy()), label_ids=labels))
        assert out["i2t_R@1"] == pytest.approx(100.0) and out["t2i_R@1"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="image_embeds, text_embeds"):
        metrics(EvalPrediction(predictions=img.numpy(), label_ids=None))
