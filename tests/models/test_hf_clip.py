"""An HF CLIP whose EOS id its tokenizer never writes is refused (it would pool one position)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, CLIPModel

from hardneg.models.hf_clip import HFCLIPTextTower
from hardneg.models.minilm import default_minilm_path
from tests.helpers.model_fixtures import tiny_hf_clip_config


def _tokenizer():
    return AutoTokenizer.from_pretrained(str(default_minilm_path()), local_files_only=True)


def test_an_eos_id_the_tokenizer_never_writes_gives_identical_features_and_is_refused():
    tokenizer = _tokenizer()
    config = tiny_hf_clip_config(tokenizer)
    config.text_config.eos_token_id = tokenizer.sep_token_id + 2  # 49407 vs 49409, in small
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    batch = tokenizer(["a red square", "two blue circles"], return_tensors="pt", padding=True)
    with torch.no_grad():  # why it must be refused: every caption pooled at position 0
        feats = model.get_text_features(**batch)
    feats = getattr(feats, "pooler_output", feats)
    torch.testing.assert_close(feats[0], feats[1])
    with pytest.raises(ValueError, match=r"eos_token_id=\d+.*never writes it"):
        HFCLIPTextTower(model, tokenizer)


def test_the_matching_eos_id_is_accepted_and_captions_differ():
    tokenizer = _tokenizer()
    model = CLIPModel(tiny_hf_clip_config(tokenizer)).eval()
    tower = HFCLIPTextTower(model, tokenizer)
    batch = tokenizer(["a red square", "two blue circles"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = tower(batch["input_ids"], batch["attention_mask"])
    assert not torch.allclose(out.pooled[0], out.pooled[1])
