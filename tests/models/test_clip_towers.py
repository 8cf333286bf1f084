"""CLIP towers built from specs compute what the libraries themselves compute (their own
loading, preprocessing and encode functions are the reference); the trained logit scale and
weights survive export and a reload with the library alone."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hardneg.models import (
    DualEncoder,
    build_clip_towers,
    export_clip,
    freeze,
    parse_model_spec,
    write_back_logit_scale,
)
from tests.helpers.model_fixtures import (
    HF_MEAN,
    HF_SCALE,
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_NAME,
    OPEN_CLIP_SCALE,
    load_images,
    write_open_clip_weights,
    write_spec_files,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["a red 3 to the left of a blue 7", "two!", "left: green five; right: red two"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_spec_files(tmp_path_factory.mktemp("specs"))


def pooler(output):
    """transformers < 5 returns a tensor from get_*_features, >= 5 a ModelOutput."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_open_clip_towers_equal_the_librarys_own_model_and_preprocessing(files):
    import open_clip

    spec = parse_model_spec(f"open_clip:{files['config']}", str(files["weights"]))
    towers = build_clip_towers(spec)
    model, _, preprocess = open_clip.create_model_and_transforms(
        OPEN_CLIP_NAME, pretrained=str(files["weights"])
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(OPEN_CLIP_NAME)
    pils, images = load_images(files["images"])
    with torch.no_grad():
        close(
            towers.image_tower(images).pooled,
            model.encode_image(torch.stack([preprocess(p) for p in pils])),
        )
        close(
            towers.text_tower.encode_text(CAPTIONS).pooled, model.encode_text(tokenizer(CAPTIONS))
        )
    assert towers.image_size == 32 and towers.model.context_length == 16
    assert towers.logit_scale == pytest.approx(OPEN_CLIP_SCALE, rel=1e-6)


def test_open_clip_pretrained_weights_really_load(files):
    import open_clip

    _, images = load_images(files["images"])
    outputs = {}
    for key in ("weights", "weights3", None):
        torch.manual_seed(0)
        pretrained = None if key is None else str(files[key])
        towers = build_clip_towers(parse_model_spec(f"open_clip:{files['config']}", pretrained))
        with torch.no_grad():
            outputs[key] = towers.image_tower(images).pooled
        if key is not None:  # the library's own loading of the same file
            direct = open_clip.create_model(OPEN_CLIP_NAME, pretrained=pretrained).eval()
            with torch.no_grad():
                pixels = (images - torch.tensor(direct.visual.image_mean).view(1, 3, 1, 1)) / (
                    torch.tensor(direct.visual.image_std).view(1, 3, 1, 1)
                )
                close(outputs[key], direct.encode_image(pixels))
    assert towers.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # random init
    for a, b in (("weights", "weights3"), ("weights", None), ("weights3", None)):
        assert (outputs[a] - outputs[b]).abs().max() > 1e-2


def test_open_clip_weights_of_another_architecture_are_rejected(files, tmp_path):
    other = tmp_path / "other-tiny.json"
    other.write_text(json.dumps({**OPEN_CLIP_CONFIG, "embed_dim": 8}))
    weights = write_open_clip_weights(tmp_path, other)
    spec = parse_model_spec(f"open_clip:{files['config']}", str(weights))
    with pytest.raises(ValueError, match=r"does not fit open_clip:.*hardneg-tiny-clip\.json"):
        build_clip_towers(spec)


def test_hf_towers_equal_clipmodel_with_its_processor(files):
    from transformers import AutoProcessor, CLIPModel

    towers = build_clip_towers(parse_model_spec(f"hf_clip:{files['hf']}"))
    model = CLIPModel.from_pretrained(str(files["hf"]), local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(str(files["hf"]), local_files_only=True)
    pils, images = load_images(files["images"])
    enc = processor.tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        pixels = processor(images=pils, return_tensors="pt")["pixel_values"]
        close(
            towers.image_tower(images).pooled, pooler(model.get_image_features(pixel_values=pixels))
        )
        close(
            towers.text_tower.encode_text(CAPTIONS).pooled, pooler(model.get_text_features(**enc))
        )
    assert tuple(towers.image_tower.image_mean) == pytest.approx(HF_MEAN)  # not CLIP's default
    assert towers.logit_scale == pytest.approx(HF_SCALE, rel=1e-6) and towers.image_size == 32


def test_builtin_spec_has_no_clip_towers():
    with pytest.raises(ValueError, match="build_image_tower and MiniLMTextTower"):
        build_clip_towers(parse_model_spec("builtin"))


def test_frozen_image_tower_stays_fixed_under_train_and_text_tower_learns(files):
    towers = build_clip_towers(parse_model_spec(f"open_clip:{files['config']}"))
    dual = DualEncoder(freeze(towers.image_tower), towers.text_tower, embed_dim=None).train()
    assert not towers.image_tower.training and towers.text_tower.training
    _, images = load_images(files["images"])
    out = dual(images, CAPTIONS)
    (out.image_emb * out.text_emb).sum().backward()
    assert all(p.grad is None for p in towers.image_tower.parameters())
    assert towers.model.text_projection.grad.abs().sum() > 0
    freeze(towers.image_tower, False)
    assert dual.train().image_tower.training
    assert all(p.requires_grad for p in towers.image_tower.parameters())


# ---------------------------------------------------------------- write-back and export


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf])
def test_write_back_rejects_impossible_scales(files, scale):
    towers = build_clip_towers(parse_model_spec(f"open_clip:{files['config']}"))
    with pytest.raises(ValueError, match="logit_scale must be a positive finite number"):
        write_back_logit_scale(towers, scale)


def trained(towers):
    """Stand-in for training: move every weight a little."""
    with torch.no_grad():
        for p in towers.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return {k: v.clone() for k, v in towers.model.state_dict().items() if k != "logit_scale"}


def assert_same_weights(model, weights):
    state = model.state_dict()
    for name, value in weights.items():
        torch.testing.assert_close(state[name], value, atol=0, rtol=0, msg=name)


def test_open_clip_write_back_and_export_reload_with_open_clip_alone(files, tmp_path):
    import open_clip

    towers = build_clip_towers(
        parse_model_spec(f"open_clip:{files['config']}", str(files["weights"]))
    )
    weights = trained(towers)
    write_back_logit_scale(towers, 33.0)
    assert towers.model.logit_scale.exp().item() == pytest.approx(33.0, rel=1e-6)
    path = export_clip(towers, tmp_path / "out", logit_scale=33.0)
    assert path == tmp_path / "out" / "open_clip.pt"
    exported_config = tmp_path / "out" / f"{OPEN_CLIP_NAME}.json"
    assert json.loads(exported_config.read_text()) == OPEN_CLIP_CONFIG
    open_clip.add_model_config(exported_config)
    reloaded = open_clip.create_model(OPEN_CLIP_NAME, pretrained=str(path))
    assert reloaded.logit_scale.exp().item() == pytest.approx(33.0, rel=1e-6)
    assert_same_weights(reloaded, weights)


def test_hf_write_back_and_export_reload_with_transformers_alone(files, tmp_path):
    from transformers import AutoProcessor, CLIPModel

    towers = build_clip_towers(parse_model_spec(f"hf_clip:{files['hf']}"))
    weights = trained(towers)
    write_back_logit_scale(towers, 33.0)
    assert towers.model.logit_scale.exp().item() == pytest.approx(33.0, rel=1e-6)
    path = export_clip(towers, tmp_path / "out", logit_scale=33.0)
    assert path == tmp_path / "out" / "hf_clip"
    reloaded = CLIPModel.from_pretrained(str(path), local_files_only=True)
    assert reloaded.logit_scale.exp().item() == pytest.approx(33.0, rel=1e-6)
    assert_same_weights(reloaded, weights)
    processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    assert tuple(processor.image_processor.image_mean) == pytest.approx(HF_MEAN)
    assert (
        processor.tokenizer(["two"])["input_ids"]
        == towers.text_tower.tokenizer(["two"])["input_ids"]
    )
    assert parse_model_spec(f"hf_clip:{path}").name == str(path)  # trainable again
