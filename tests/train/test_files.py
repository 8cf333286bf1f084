"""Training on your own data with your own CLIP: every source × model × method end to end
(generated images on disk, tiny random-init open_clip / HF CLIP models), evaluation of a run on
any source with compositional probes, exact resume and 2-rank DDP on a real-data source."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from hardneg import cli
from hardneg.train.trainer import Trainer
from hardneg.train.validate import resolve_config
from tests.helpers.ddp import run_distributed, train_step_worker
from tests.helpers.model_fixtures import write_hf_clip_dir, write_open_clip_config
from tests.helpers.real_fixtures import (
    write_compositional,
    write_csv,
    write_hf_saved,
    write_karpathy,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = [
    "batch_size=4",
    "log_every=1",
    "checkpoint_every=0",
    "progress=false",
    "batch_sampler.search_space_batches=2",
    "batch_sampler.falcon_update_interval=1",
    "miner.k=2",
    "model.crossmodal_dim=32",
    "model.crossmodal_heads=2",
    "model.crossmodal_layers=1",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every source and model on disk, once per module."""
    root = tmp_path_factory.mktemp("files")
    for name in ("karpathy", "csv", "hf", "models", "probes"):
        (root / name).mkdir()
    json_path, images = write_karpathy(root / "karpathy", n_train=8, n_test=4)
    probes = write_compositional(root / "probes", n=6)
    return {
        "karpathy": (f"karpathy:{json_path}:train", images),
        "csv": (f"csv:{write_csv(root / 'csv', n=8)}", None),
        "hf": (f"hf:{write_hf_saved(root / 'hf', n=8)}", None),
        "open_clip": f"open_clip:{write_open_clip_config(root / 'models')}",
        "hf_clip": f"hf_clip:{write_hf_clip_dir(root / 'models')}",
        "probes": probes,
    }


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _argv(files, source: str, model: str, method: str, out: Path, steps: int, *extra: str):
    data, images = files[source]
    argv = ["train", "--method", method, "--data", data, "--model", files[model]]
    argv += ["--out", str(out), "--steps", str(steps), "--set", *SMALL, *extra]
    return argv + (["--images", str(images)] if images else [])


def _log(run: Path) -> list[dict[str, str]]:
    with (run / "train_log.csv").open() as f:
        return list(csv.DictReader(f))


def test_csv_open_clip_infonce_trains_evaluates_and_exports(files, tmp_path, capsys):
    import open_clip

    run = tmp_path / "run"
    assert cli.main(_argv(files, "csv", "open_clip", "infonce", run, 3)) == 0
    assert [int(float(r["step"])) for r in _log(run)] == [1, 2, 3]
    capsys.readouterr()
    data = files["csv"][0]
    probes = str(files["probes"])
    assert cli.main(["eval", str(run), "--data", data, "--compositional", probes]) == 0
    metrics = json.loads(capsys.readouterr().out)["test"]
    for key in ("i2t_R@1", "i2t_R@5", "t2i_R@10", "i2t_mAP", "t2i_mAP", "comp_overall"):
        assert 0.0 <= metrics[key] <= 100.0, key
    # a method named InfoNCE trains InfoNCE: no cross-modal head, no ITM figures
    assert "itm_comp_overall" not in metrics
    saved = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    assert not any(k.startswith("crossmodal.") for k in saved)
    # the exported model loads with open_clip alone and carries the trained logit scale
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    trained = math.exp(float(state["loss_fn"]["logit_scale"]))
    config = files["open_clip"].split(":", 1)[1]
    open_clip.add_model_config(config)
    model = open_clip.create_model(Path(config).stem, pretrained=str(run / "open_clip.pt"))
    assert float(model.logit_scale.detach().exp()) == pytest.approx(trained, rel=1e-5)
    assert trained != pytest.approx(20.0)  # it moved from the checkpoint's initial scale


@pytest.mark.slow
@pytest.mark.parametrize("source", ["karpathy", "csv", "hf"])
@pytest.mark.parametrize("model", ["open_clip", "hf_clip"])
@pytest.mark.parametrize("method", ["infonce", "bacl_dual", "falcon_dual", "negclip"])
def test_every_source_model_and_method_trains(files, tmp_path, source, model, method):
    run = tmp_path / "run"
    assert cli.main(_argv(files, source, model, method, run, 2)) == 0
    rows = _log(run)
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows)
    result = json.loads((run / "metrics.json").read_text())
    assert result["steps"] == 2 and result["exported"]
    if source == "karpathy":  # evaluated on the JSON's test split
        assert 0.0 <= result["metrics"]["test"]["i2t_R@1"] <= 100.0
    if method == "bacl_dual":
        assert "cla" in rows[0] and "alpha" in rows[0]
    if method == "falcon_dual":
        assert "falcon_reward" in rows[0]


def _values(files, tmp_path, method: str, **over):
    from hardneg.train.config import parse_overrides

    values = parse_overrides(SMALL)
    values["data"] = {"dataset": files["csv"][0]}
    values["model"] = {**values.get("model", {}), "spec": files["open_clip"], "dropout": 0.0}
    values.update(out_dir=str(tmp_path / "run"), **over)
    return values


def test_hard_negatives_on_real_data_are_perturbations_of_the_drawn_caption(files, tmp_path):
    trainer = Trainer(resolve_config("negclip", _values(files, tmp_path, "negclip")))
    recipe = trainer.recipe
    draw = recipe.draw(torch.arange(4), 0)
    decode = recipe.text_tower.tokenizer.decode

    def words(ids, mask) -> list[str]:
        return decode(ids[mask].tolist()).replace("<start_of_text>", "").split()

    text, hard = draw.payload["text"], draw.payload["hard"]
    for i in range(4):
        caption = words(text.input_ids[i], text.mask[i])
        negative = words(hard.input_ids[i], hard.mask[i])
        assert caption != negative
        # a swap keeps the words; a relation flip changes exactly one
        same = sorted(caption) == sorted(negative)
        flipped = sum(a != b for a, b in zip(caption, negative)) == 1
        assert same or flipped, (caption, negative)


def test_files_run_learns(files, tmp_path):
    """16 steps on the 8 images: the contrastive loss falls (a broken gradient path would not)."""
    values = _values(files, tmp_path, "infonce", steps=16, batch_size=8)
    values["optim"] = {"lr": 3e-3, "warmup_steps": 1}
    history = Trainer(resolve_config("infonce", values)).fit()
    first = sum(h["contrastive"] for h in history[:3]) / 3
    last = sum(h["contrastive"] for h in history[-3:]) / 3
    assert last < first - 0.1, (first, last)


@pytest.mark.parametrize("method", ["falcon_dual", "bacl_dual"])
def test_files_resume_reproduces_the_uninterrupted_run(files, tmp_path, method):
    over = {"steps": 6}
    full = Trainer(resolve_config(method, _values(files, tmp_path / "a", method, **over)))
    full.fit()
    half = Trainer(resolve_config(method, _values(files, tmp_path / "b", method, **over)))
    half.fit(stop_at=3)
    half.save()
    resumed = Trainer(resolve_config(method, _values(files, tmp_path / "b", method, **over)))
    assert resumed.resume()
    resumed.fit()
    expected = full.model.trainable_state_dict()
    got = resumed.model.trainable_state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("method", ["infonce", "bacl_dual"])
def test_files_ddp_two_ranks_match_single_process(files, tmp_path, method):
    values = _values(files, tmp_path, method, batch_size=8)
    values["optim"] = {"name": "sgd", "lr": 0.05}
    single = Trainer(resolve_config(method, values))
    before = {k: v.clone() for k, v in single.model.trainable_state_dict().items()}
    logs = single.train_step(list(range(8)))
    ranks = run_distributed(train_step_worker, 2, single.cfg.to_dict(), 8)
    for r in ranks:
        assert r["loss"] == pytest.approx(logs["loss"], abs=1e-5)
    moved = 0
    for key, value in single.model.trainable_state_dict().items():
        for r in ranks:
            assert torch.allclose(r["params"][key], value, atol=1e-5), key
        moved += int(not torch.equal(value, before[key]))
    assert moved > 10


ALL_METHODS = [
    "infonce", "siglip", "hcl", "dcl", "soft_infonce", "negclip", "ega", "mnrl_hardness",
    "bns_dual", "cla_dual", "bacl_dual", "bacl_dual_ega", "grit_dual", "fixed_q_dual",
    "progressive", "falcon_dual",
    "falcon_batch_dual",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_trains_on_a_csv_with_open_clip(files, tmp_path, method):
    run = tmp_path / "run"
    assert cli.main(_argv(files, "csv", "open_clip", method, run, 3)) == 0
    rows = _log(run)
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)


@pytest.mark.slow
def test_digitscenes_trains_with_an_open_clip_model(files, tmp_path, capsys):
    """DigitScenes through the files recipe: the scenes' own hard negatives, test-split eval."""
    run = tmp_path / "run"
    argv = ["train", "--method", "negclip", "--data", "digitscenes:tiny"]
    argv += ["--model", files["open_clip"], "--out", str(run), "--steps", "2", "--set", *SMALL]
    argv += [f"data.cache_dir={tmp_path / 'cache'}", "batch_size=8"]
    assert cli.main(argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]["test"]
    assert 0.0 <= metrics["i2t_R@1"] <= 100.0


def test_clip_fine_tuning_does_not_decay_gains_biases_and_the_temperature(files, tmp_path):
    trainer = Trainer(resolve_config("infonce", _values(files, tmp_path, "infonce")))
    decay = {id(p): g["weight_decay"] for g in trainer.optimizer.param_groups for p in g["params"]}
    names = dict(trainer.model.named_parameters())
    names["loss_fn.logit_scale"] = trainer.loss_fn.logit_scale
    for name, param in names.items():
        if not param.requires_grad:
            continue
        plain = param.ndim < 2 or any(k in name for k in ("ln", "bias", "logit_scale"))
        assert decay[id(param)] == (0.0 if plain else 0.05), name
    assert sum(v > 0 for v in decay.values()) > 5 and sum(v == 0 for v in decay.values()) > 5


def test_threaded_decoding_gives_the_same_images_in_order(files, tmp_path):
    values = _values(files, tmp_path, "infonce")
    values["data"] = {**values["data"], "workers": 3}
    recipe = Trainer(resolve_config("infonce", values)).recipe
    items = [5, 0, 7, 3, 3]
    expected = torch.stack([recipe.dataset.load_image(i) for i in items])
    assert torch.equal(recipe._images(items), expected)


def test_eval_takes_the_data_options_train_takes(files, tmp_path, capsys):
    """``hardneg eval RUN --data karpathy:OTHER.json:test --images DIR`` reads another
    dataset's images from its own folder, as ``hardneg train`` would."""
    run = tmp_path / "run"
    assert cli.main(_argv(files, "karpathy", "open_clip", "infonce", run, 2)) == 0
    other_json, other_images = write_karpathy(tmp_path / "other", n_train=4, n_test=4)
    capsys.readouterr()
    argv = ["eval", str(run), "--data", f"karpathy:{other_json}:test"]
    assert cli.main([*argv, "--images", str(other_images)]) == 0
    metrics = json.loads(capsys.readouterr().out)["test"]
    assert 0.0 <= metrics["i2t_R@1"] <= 100.0
    record = json.loads((run / "eval.json").read_text())
    assert record["data_options"] == {"images": str(other_images)}
    # the run's own image folder does not hold the other dataset's images: without --images
    # the evaluation cannot find them (the option is what made the difference)
    assert cli.main(argv) == 2
