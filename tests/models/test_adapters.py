"""CLIP adapters (transformers, open_clip) on tiny random-init models: same interface, same
pooled features as the wrapped model's own encode functions, gradients, clear errors."""

from __future__ import annotations

import pytest
import torch

from hardneg.models.dual import DualEncoder
from hardneg.models.hf_clip import HFCLIPAdapter
from hardneg.models.image import CLIP_MEAN, CLIP_STD
from hardneg.models.minilm import default_minilm_path
from hardneg.models.open_clip import OpenCLIPAdapter
from hardneg.models.outputs import ImageOutput, TextOutput
from tests.helpers.model_fixtures import tiny_hf_clip_config

CAPTIONS = ["a red 3 to the left of a blue 7", "two!", "left: green five; right: red two"]
MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


pytestmark = pytest.mark.usefixtures("one_thread")


def pooler(output):
    """transformers < 5 returns a tensor from get_*_features, >= 5 a ModelOutput."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.fixture(scope="module")
def bert_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_minilm_path()), local_files_only=True)


@pytest.fixture(scope="module")
def hf_clip(bert_tokenizer):
    from transformers import CLIPModel

    config = tiny_hf_clip_config(bert_tokenizer)
    torch.manual_seed(0)
    return CLIPModel(config).eval()


@pytest.fixture(scope="module")
def oc_parts():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer(context_length=16)
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=24,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, patch_size=8, image_size=32, head_width=16),
        text_cfg=CLIPTextCfg(
            context_length=16, vocab_size=tokenizer.vocab_size, width=32, heads=2, layers=1
        ),
    ).eval()
    return model, tokenizer


# ---------------------------------------------------------------- transformers CLIPModel


def test_hf_image_output_shapes_and_pooled_equal_get_image_features(hf_clip, bert_tokenizer):
    adapter = HFCLIPAdapter(hf_clip, bert_tokenizer)
    images = torch.rand(2, 3, 32, 32)
    out = adapter.encode_image(images)
    assert isinstance(out, ImageOutput) and out.grid == (4, 4)
    assert out.tokens.shape == (2, 16, 32) and out.pooled.shape == (2, 16)
    with torch.no_grad():
        expected = pooler(hf_clip.get_image_features(pixel_values=(images - MEAN) / STD))
    torch.testing.assert_close(out.pooled, expected, atol=1e-5, rtol=1e-5)


def test_hf_image_tokens_are_post_layernormed_patch_states(hf_clip, bert_tokenizer):
    adapter = HFCLIPAdapter(hf_clip, bert_tokenizer)
    images = torch.rand(2, 3, 32, 32)
    vision = hf_clip.vision_model(pixel_values=(images - MEAN) / STD, output_hidden_states=True)
    last = vision.hidden_states[-1][:, 1:]
    norm = hf_clip.vision_model.post_layernorm
    mu, var = last.mean(-1, keepdim=True), last.var(-1, unbiased=False, keepdim=True)
    expected = (last - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
    torch.testing.assert_close(adapter.encode_image(images).tokens, expected, atol=1e-5, rtol=1e-5)


def test_hf_images_of_another_size_are_resized(hf_clip, bert_tokenizer):
    adapter = HFCLIPAdapter(hf_clip, bert_tokenizer)
    small = adapter.encode_image(torch.full((1, 3, 32, 32), 0.4)).pooled
    large = adapter.encode_image(torch.full((1, 3, 48, 64), 0.4)).pooled  # constant image
    torch.testing.assert_close(large, small, atol=1e-5, rtol=1e-5)


def test_hf_text_output_and_pooled_equal_get_text_features(hf_clip, bert_tokenizer):
    adapter = HFCLIPAdapter(hf_clip, bert_tokenizer)
    out = adapter.encode_text(CAPTIONS)
    enc = bert_tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    assert isinstance(out, TextOutput) and out.tokens.shape == (3, enc["input_ids"].shape[1], 32)
    assert torch.equal(out.mask, enc["attention_mask"].bool())
    assert torch.equal(out.input_ids, enc["input_ids"])
    with torch.no_grad():
        expected = pooler(hf_clip.get_text_features(**enc))
    torch.testing.assert_close(out.pooled, expected, atol=1e-5, rtol=1e-5)
    assert adapter.text.vocab_size == 30522 and adapter.text.mask_token_id == 103
    assert len(adapter.text.word_ids(CAPTIONS)[0]) == enc["input_ids"].shape[1]


def test_hf_gradients_reach_clip_projections_and_dual_heads(hf_clip, bert_tokenizer):
    adapter = HFCLIPAdapter(hf_clip, bert_tokenizer)
    model = DualEncoder(adapter.image, adapter.text, embed_dim=8)
    out = model(torch.rand(3, 3, 32, 32), CAPTIONS)
    (out.image_emb * out.text_emb).sum().backward()
    for param in (
        hf_clip.visual_projection.weight,
        hf_clip.text_projection.weight,
        model.image_head.net.weight,
        model.text_head.net.weight,
    ):
        assert param.grad is not None and param.grad.abs().sum() > 0
    hf_clip.zero_grad(set_to_none=True)


def test_hf_dual_encoder_without_heads_returns_clip_features(hf_clip, bert_tokenizer):
    adapter = HFCLIPAdapter(hf_clip, bert_tokenizer)
    model = DualEncoder(adapter.image, adapter.text, embed_dim=None)
    images = torch.rand(2, 3, 32, 32)
    emb, _ = model.encode_image(images)
    torch.testing.assert_close(emb, adapter.encode_image(images).pooled)
    assert adapter.logit_scale is hf_clip.logit_scale


def test_hf_from_pretrained_loads_a_local_directory(hf_clip, bert_tokenizer, tmp_path):
    hf_clip.save_pretrained(tmp_path)
    bert_tokenizer.save_pretrained(tmp_path)
    loaded = HFCLIPAdapter.from_pretrained(tmp_path)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = pooler(hf_clip.get_image_features(pixel_values=(images - MEAN) / STD))
        got = loaded.encode_image(images).pooled
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_hf_from_pretrained_without_weights_says_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="download the weights on a machine with internet"):
        HFCLIPAdapter.from_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="pass the local directory"):
        HFCLIPAdapter.from_pretrained(tmp_path)


def test_hf_tokenizer_larger_than_the_vocabulary_is_rejected(bert_tokenizer):
    from transformers import CLIPConfig, CLIPModel

    tiny = CLIPModel(
        CLIPConfig(
            text_config=dict(
                vocab_size=100,
                hidden_size=8,
                intermediate_size=8,
                num_hidden_layers=1,
                num_attention_heads=1,
            ),
            vision_config=dict(
                image_size=8,
                patch_size=4,
                hidden_size=8,
                intermediate_size=8,
                num_hidden_layers=1,
                num_attention_heads=1,
            ),
            projection_dim=4,
        )
    )
    with pytest.raises(ValueError, match="tokenizer"):
        HFCLIPAdapter(tiny, bert_tokenizer)


# ---------------------------------------------------------------- open_clip CLIP


def test_open_clip_image_pooled_equals_encode_image_and_tokens_equal_output_tokens(oc_parts):
    model, tokenizer = oc_parts
    adapter = OpenCLIPAdapter(model, tokenizer)
    images = torch.rand(2, 3, 32, 32)
    out = adapter.encode_image(images)
    assert out.tokens.shape == (2, 16, 32) and out.pooled.shape == (2, 24) and out.grid == (4, 4)
    pixels = (images - MEAN) / STD
    with torch.no_grad():
        torch.testing.assert_close(out.pooled, model.encode_image(pixels), atol=1e-5, rtol=1e-5)
        model.visual.output_tokens = True  # open_clip's own token output, as a reference
        try:
            _, tokens = model.visual(pixels)
        finally:
            model.visual.output_tokens = False
    torch.testing.assert_close(out.tokens, tokens, atol=1e-5, rtol=1e-5)


def test_open_clip_text_pooled_equals_encode_text_and_tokens_equal_intermediates(oc_parts):
    model, tokenizer = oc_parts
    adapter = OpenCLIPAdapter(model, tokenizer)
    out = adapter.encode_text(CAPTIONS)
    ids = tokenizer(CAPTIONS)
    assert out.tokens.shape == (3, 16, 32) and out.pooled.shape == (3, 24)
    assert torch.equal(out.input_ids, ids)
    lengths = [min(len(tokenizer.encode(c)) + 2, 16) for c in CAPTIONS]  # SOT ... EOT
    assert out.mask.sum(1).tolist() == lengths
    with torch.no_grad():
        torch.testing.assert_close(out.pooled, model.encode_text(ids), atol=1e-5, rtol=1e-5)
        inter = model.forward_intermediates(
            text=ids, text_indices=1, normalize=False, normalize_intermediates=True
        )["text_intermediates"][-1]
    torch.testing.assert_close(out.tokens, inter, atol=1e-5, rtol=1e-5)


def test_open_clip_word_ids_rebuild_the_words(oc_parts):
    model, tokenizer = oc_parts
    adapter = OpenCLIPAdapter(model, tokenizer)
    long = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    texts = [CAPTIONS[1], CAPTIONS[2], long]
    rows = adapter.text.word_ids(texts)
    ids = adapter.text.tokenize(texts)["input_ids"]
    for text, row, token_ids in zip(texts, rows, ids):
        assert len(row) == 16 and row[0] is None
        kept = sorted({w for w in row if w is not None})
        for k in kept[:-1]:  # the last kept word may be cut by truncation
            word_tokens = [t for t, w in zip(token_ids.tolist(), row) if w == k]
            assert tokenizer.decode(word_tokens).replace(" ", "") == text.split()[k].lower()
    assert rows[2][-1] is None and rows[2][-2] == 13  # truncated: last position is EOT


def test_open_clip_gradients_reach_projections(oc_parts):
    model, tokenizer = oc_parts
    adapter = OpenCLIPAdapter(model, tokenizer)
    img = adapter.encode_image(torch.rand(2, 3, 32, 32)).pooled
    txt = adapter.encode_text(CAPTIONS[:2]).pooled
    (img * txt).sum().backward()
    assert model.visual.proj.grad.abs().sum() > 0
    assert model.text_projection.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_open_clip_adapter_owns_each_parameter_once(oc_parts):
    model, tokenizer = oc_parts
    adapter = OpenCLIPAdapter(model, tokenizer)
    ours = {id(p) for p in adapter.parameters()}
    assert ours == {id(p) for p in model.parameters()}
    text_ids = {id(p) for p in adapter.text.parameters()}
    assert text_ids.isdisjoint(id(p) for p in adapter.image.parameters())
    assert adapter.text.special_token_ids == (tokenizer.sot_token_id, tokenizer.eot_token_id)


def test_open_clip_rejects_models_it_cannot_wrap(oc_parts):
    _, tokenizer = oc_parts
    with pytest.raises(ValueError, match="CustomTextCLIP"):
        OpenCLIPAdapter(torch.nn.Linear(2, 2), tokenizer)
