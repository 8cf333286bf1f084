"""The files recipe's learning signal, checked against expectations written here: FALCON's
reward without an update, NegCLIP's extra negatives, gradients into a live CLIP text tower,
frozen towers, the export, which items are positives, and multi-positive evaluation against a
brute-force ranking (tiny random open_clip model, generated images on disk)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hardneg.data.sources import open_source
from hardneg.eval.datasets import evaluate_dataset
from hardneg.models.inputs import Images, Texts
from hardneg.train.config import DataConfig
from hardneg.train.trainer import Trainer
from hardneg.train.validate import resolve_config
from tests.helpers.model_fixtures import write_open_clip_config
from tests.helpers.real_fixtures import captions_for, write_csv, write_images, write_karpathy

pytestmark = pytest.mark.usefixtures("one_thread")

#: captions no perturbation rule applies to (so the recipe needs another hard negative)
PLAIN = ["photo number one", "photo number two", "photo number three", "photo number four"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("signal")
    plain = root / "plain"
    paths = write_images(plain / "images", 6)
    plain_csv = plain / "plain.csv"
    with open(plain_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "title"])
        for i, path in enumerate(paths):
            writer.writerow([f"images/{path.name}", f"snapshot {i} {PLAIN[i % 4]}"])
    json_path, images = write_karpathy(root, n_train=8, n_test=2)
    return {
        "csv": f"csv:{write_csv(root, n=8, captions_per_image=2)}",
        "plain": f"csv:{plain_csv}",
        "karpathy": (f"karpathy:{json_path}:train", str(images)),
        "model": f"open_clip:{write_open_clip_config(root)}",
    }


def _trainer(files, tmp_path, method: str, source: str = "csv", **over) -> Trainer:
    values = {
        "batch_size": 4,
        "steps": 3,
        "log_every": 1,
        "checkpoint_every": 0,
        "progress": False,
        "out_dir": str(tmp_path / "run"),
        "batch_sampler": {"search_space_batches": 2, "falcon_update_interval": 1},
        "miner": {"k": 2},
        "model": {
            "spec": files["model"],
            "crossmodal_dim": 32,
            "crossmodal_heads": 2,
            "crossmodal_layers": 1,
            "dropout": 0.3,
        },
        "data": {"dataset": files[source]},
    }
    if source == "karpathy":
        values["data"] = {"dataset": files[source][0], "images": files[source][1]}
    for key, value in over.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    return Trainer(resolve_config(method, values))


def _record_text_outputs(model) -> list:
    """Patch the text tower so that every output it computes is kept (pooled grads retained)."""
    tower, seen = model.dual.text_tower, []
    forward = tower.forward

    def recording(input_ids, attention_mask):
        out = forward(input_ids, attention_mask)
        if out.pooled.requires_grad:
            out.pooled.retain_grad()
        seen.append(out)
        return out

    tower.forward = recording
    return seen


# --------------------------------------------------------------------------- FALCON's reward
def test_falcon_reward_is_exactly_zero_when_the_model_does_not_change(files, tmp_path):
    """lr = 0: the update changes nothing, so MLM(before) − MLM(after) is 0 exactly, even with
    dropout on (both passes run in eval mode); with lr > 0 the reward moves."""
    still = _trainer(files, tmp_path / "still", "falcon_dual", optim={"lr": 0.0})
    assert [h["falcon_reward"] for h in still.fit()] == [0.0, 0.0, 0.0]
    optim = {"lr": 1e-2, "warmup_steps": 0}
    moving = _trainer(files, tmp_path / "moving", "falcon_dual", optim=optim)
    assert all(h["falcon_reward"] != 0.0 for h in moving.fit())


# ------------------------------------------------------------------------ NegCLIP negatives
def test_negclip_hard_negatives_are_extra_image_to_text_negatives(files, tmp_path):
    """The contrastive term is InfoNCE whose image→text softmax also holds each image's hard
    negative caption (computed here from the embeddings), and its gradient reaches the text
    tower through the hard negatives."""
    trainer = _trainer(files, tmp_path, "negclip")
    model = trainer.model
    (batch,) = trainer.micro_batches(trainer.recipe.draw(torch.arange(4), 0))
    seen = _record_text_outputs(model)
    out = trainer.objective(model, batch, trainer.progress, trainer.autocast)
    true_text, hard_text = seen[0], seen[1]
    assert torch.equal(hard_text.input_ids, batch.hard_text.input_ids)
    out.loss.backward()
    assert float(hard_text.pooled.grad.norm()) > 0
    with torch.no_grad():
        u = F.normalize(model.encode_images(batch.images)[0], dim=-1)
        v = F.normalize(true_text.pooled, dim=-1)
        h = F.normalize(hard_text.pooled, dim=-1)
        scale = float(trainer.loss_fn.scale())
    i2t = [-torch.log_softmax(scale * torch.cat([v @ u[i], h @ u[i]]), 0)[i] for i in range(4)]
    t2i = [-torch.log_softmax(scale * (u @ v[j]), 0)[j] for j in range(4)]
    expected = 0.5 * (sum(i2t) / 4 + sum(t2i) / 4)
    assert out.logs["contrastive"] == pytest.approx(float(expected), rel=1e-5)
    without = 0.5 * (
        sum(-torch.log_softmax(scale * (v @ u[i]), 0)[i] for i in range(4)) / 4 + sum(t2i) / 4
    )
    assert out.logs["contrastive"] > float(without) + 1e-3  # the extras are in the denominator


def test_hard_negative_fallback_is_never_a_caption_of_an_image_in_the_batch(files, tmp_path):
    """A caption no rule rewrites gets another image's caption as its hard negative; that
    image must not be in the batch, where the caption would be a false negative of it."""
    trainer = _trainer(files, tmp_path, "negclip", source="plain")
    recipe = trainer.recipe
    decode = recipe.text_tower.tokenizer.decode

    def texts(tokens: Texts) -> list[str]:
        return [
            decode(ids[mask].tolist()).replace("<start_of_text>", "").replace("<end_of_text>", "")
            for ids, mask in zip(tokens.input_ids, tokens.mask)
        ]

    for step in range(20):
        index = torch.randperm(6, generator=torch.Generator().manual_seed(step))[:4]
        draw = recipe.draw(index, step)
        in_batch = {c for i in index.tolist() for c in recipe.dataset.captions[i]}
        for negative in texts(draw.payload["hard"]):
            assert negative.strip() not in in_batch, (step, negative)


def test_negatives_none_is_refused_for_negclip_on_real_data(files, tmp_path):
    """``data.negatives='none'`` means no hard-negative captions: NegCLIP cannot run on it (it
    would silently use the rule-based perturbations)."""
    with pytest.raises(ValueError, match=r"data\.negatives='none'.*hard_negative_captions"):
        _trainer(files, tmp_path, "negclip", data={"negatives": "none"})


def test_digitscenes_with_a_clip_model_goes_through_the_files_recipe(files, tmp_path):
    """DigitScenes with a CLIP spec is valid and trains through the files recipe (its scenes
    as an image-caption dataset; trained end to end in tests/train/test_files.py)."""
    from hardneg.train.trainer import uses_digitscenes_recipe

    values = {"out_dir": str(tmp_path), "model": {"spec": files["model"]}}
    assert not uses_digitscenes_recipe(resolve_config("infonce", values))


# ---------------------------------------------------------------- a live CLIP text tower
def test_bns_and_cla_train_a_live_clip_text_tower(files, tmp_path):
    """BACL on a CLIP: the contrastive loss (through BNS's restriction) reaches the text
    transformer; the cross-modal head reads the non-contextual token embeddings, and CLA's
    gradient reaches them."""
    trainer = _trainer(
        files, tmp_path, "bacl_dual", crossmodal={"itm_weight": 0.0, "mlm_weight": 0.0}
    )
    model, tower = trainer.model, trainer.model.dual.text_tower
    (batch,) = trainer.micro_batches(trainer.recipe.draw(torch.arange(4), 0))
    read = []
    forward = model.crossmodal.forward

    def recording(text, image, text_mask=None):
        read.append(text.tokens.detach().clone())
        return forward(text, image, text_mask)

    model.crossmodal.forward = recording
    out = trainer.objective(model, batch, trainer.progress, trainer.autocast)
    assert "alpha" in out.logs and out.logs["cla"] > 0
    expected = tower.token_embedding(batch.text.input_ids).detach()
    assert torch.equal(read[0][: len(expected)], expected)  # positives, then hard pairs
    # the contrastive term alone (BNS-restricted) trains the text transformer
    contrastive = trainer.loss_fn.loss(out.pairs)
    assert float(contrastive.detach()) == pytest.approx(out.logs["contrastive"])
    contrastive.backward(retain_graph=True)
    layers = [p.grad for n, p in tower.named_parameters() if n.startswith("transformer.")]
    assert all(g is not None for g in layers) and sum(float(g.norm()) for g in layers) > 0
    assert tower.token_embedding.weight.grad is not None
    model.zero_grad()
    (out.loss - contrastive).backward()  # CLA alone: only the token embeddings, not the layers
    assert float(tower.token_embedding.weight.grad.norm()) > 0
    assert all(
        p.grad is None or float(p.grad.norm()) == 0
        for n, p in tower.named_parameters()
        if n.startswith("transformer.")
    )


@pytest.mark.parametrize("which", ["text", "image"])
def test_frozen_tower_gets_no_gradient_and_does_not_move(files, tmp_path, which):
    trainer = _trainer(
        files, tmp_path, "bacl_dual", model={f"freeze_{which}_tower": True}, optim={"lr": 1e-2}
    )
    tower = getattr(trainer.model.dual, f"{which}_tower")
    other = trainer.model.dual.image_tower if which == "text" else trainer.model.dual.text_tower
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    other_before = {k: v.clone() for k, v in other.state_dict().items()}
    modes = []
    forward = tower.forward

    def recording(*args, **kwargs):
        modes.append(tower.training)
        return forward(*args, **kwargs)

    tower.forward = recording
    trainer.fit()
    assert modes and not any(modes)  # run as a fixed extractor (eval mode)
    assert all(p.grad is None and not p.requires_grad for p in tower.parameters())
    for key, value in tower.state_dict().items():
        assert torch.equal(value, before[key]), key
    optimized = {id(q) for group in trainer.optimizer.param_groups for q in group["params"]}
    assert not any(id(p) in optimized for p in tower.parameters())
    moved = sum(not torch.equal(v, other_before[k]) for k, v in other.state_dict().items())
    assert moved > len(other_before) // 2  # the other tower trains


def test_exported_open_clip_is_the_trained_model(files, tmp_path):
    """The exported open_clip model embeds like the trained model and carries the loss's
    trained logit scale."""
    import open_clip

    from hardneg.models.image import resize_and_normalize

    trainer = _trainer(files, tmp_path, "infonce", optim={"lr": 1e-2})
    trainer.fit()
    scale = float(trainer.loss_fn.scale().detach())
    path = trainer.recipe.export(tmp_path / "export", scale)
    config = Path(files["model"].split(":", 1)[1])
    open_clip.add_model_config(str(config))
    exported = open_clip.create_model(config.stem, pretrained=str(path)).eval()
    tokenizer = open_clip.get_tokenizer(config.stem)
    captions = [*captions_for(0, 2), "a dog"]
    pixels = torch.stack([trainer.recipe.dataset.load_image(i) for i in range(3)])
    model = trainer.model.eval()
    tower = model.dual.image_tower
    with torch.no_grad():
        ours_t = model.encode_texts(trainer.recipe._tokens(captions))[0]
        theirs_t = exported.encode_text(tokenizer(captions, context_length=16))
        ours_i = model.encode_images(Images(pixels=pixels))[0]
        prepared = resize_and_normalize(pixels, tower.image_size, tower.image_mean, tower.image_std)
        theirs_i = exported.encode_image(prepared)
    assert torch.allclose(ours_t, theirs_t, atol=1e-6)
    assert torch.allclose(ours_i, theirs_i, atol=1e-6)
    assert float(exported.logit_scale.detach().exp()) == pytest.approx(scale, rel=1e-6)
    assert scale != pytest.approx(1 / 0.07, rel=1e-4)  # it trained away from the init


# ------------------------------------------------------------------------------ positives
def test_items_are_images_and_ids_are_their_semantic_ids(files, tmp_path):
    """CSV: the rows of one image are one item (both captions drawn over steps), ids in a
    batch are distinct; Karpathy: ids are the imgids."""
    trainer = _trainer(files, tmp_path, "infonce")
    recipe = trainer.recipe
    assert len(recipe.dataset) == 8 and all(len(c) == 2 for c in recipe.dataset.captions)
    drawn = set()
    for step in range(12):
        draw = recipe.draw(torch.arange(8), step)
        assert len(set(draw.payload["ids"].tolist())) == 8
        drawn.add(tuple(draw.payload["text"].input_ids[0].tolist()))
    assert len(drawn) == 2  # image 0's two captions both come up
    karpathy = _trainer(files, tmp_path / "k", "infonce", source="karpathy")
    entries = json.loads(Path(files["karpathy"][0].split(":")[1]).read_text())["images"]
    imgids = [e["imgid"] for e in entries if e["split"] == "train"]
    draw = karpathy.recipe.draw(torch.tensor([3, 0, 5]), 0)
    assert draw.payload["ids"].tolist() == [imgids[3], imgids[0], imgids[5]]


def test_hf_rows_with_the_same_embedded_image_are_one_item(tmp_path, monkeypatch):
    """An HF table of one row per caption with the image bytes embedded (no path column): the
    rows of one image must be one item, or a batch (a hard one above all: GRIT, FALCON, BNS
    pick the most similar items) holds an image as its own negative."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    paths = write_images(tmp_path / "source", 4)
    rows = [(str(paths[i]), captions_for(i, 2)[k]) for k in range(2) for i in range(4)]
    table = datasets.Dataset.from_dict(
        {"image": [r[0] for r in rows], "text": [r[1] for r in rows]}
    ).cast_column("image", datasets.Image())
    table.save_to_disk(str(tmp_path / "saved"))
    for path in paths:
        path.unlink()
    dataset = open_source(DataConfig(dataset=f"hf:{tmp_path / 'saved'}"), 32)
    assert len(dataset) == 4 and len(set(dataset.semantic_ids.tolist())) == 4
    assert dataset.captions == [captions_for(i, 2) for i in range(4)]
    images = [dataset.load_image(k) for k in range(4)]
    assert not any(torch.equal(images[a], images[b]) for a in range(4) for b in range(a))


# ----------------------------------------------------------------------------- evaluation
class _ChosenVectors(torch.nn.Module):
    """A model whose embeddings are chosen: image k (a solid red of 40·(k+1)) → ``images[k]``,
    caption with token id c → ``texts[c]``."""

    crossmodal = None

    def __init__(self, images: torch.Tensor, texts: torch.Tensor) -> None:
        super().__init__()
        self.images, self.texts = images, texts

    def encode_images(self, images: Images):
        key = (images.pixels[:, 0, 0, 0] * 255 / 40).round().long() - 1
        return self.images[key], None

    def encode_texts(self, texts: Texts):
        return self.texts[texts.input_ids[:, 0]], None


def _brute_force(sim: np.ndarray, rel: np.ndarray) -> dict[str, float]:
    """R@1/R@5 and mAP of each row's ranking (descending score), in percent."""
    out = {}
    for k in (1, 5):
        out[f"R@{k}"] = 100 * np.mean(
            [rel[q, np.argsort(-sim[q])[:k]].any() for q in range(len(sim))]
        )
    aps = []
    for q in range(len(sim)):
        ranked = rel[q, np.argsort(-sim[q])]
        hits = np.flatnonzero(ranked) + 1
        aps.append(np.mean(np.arange(1, len(hits) + 1) / hits))
    out["mAP"] = 100 * float(np.mean(aps))
    return out


def test_dataset_evaluation_counts_every_caption_of_an_image(tmp_path):
    """Karpathy JSON with imgids out of order and 2 / 1 / 3 / 2 captions: R@K and mAP of both
    directions equal a brute-force ranking whose positives are all of an image's captions."""
    counts, imgids = [2, 1, 3, 2], [30, 10, 20, 40]
    folder = tmp_path / "images"
    folder.mkdir()
    entries, captions, sentid = [], [], 0
    for k, (n, imgid) in enumerate(zip(counts, imgids)):
        Image.new("RGB", (8, 8), (40 * (k + 1), 0, 0)).save(folder / f"{k}.png")
        sentences = []
        for _ in range(n):
            sentences.append({"raw": f"caption {sentid}", "sentid": sentid})
            captions.append((f"caption {sentid}", imgid))
            sentid += 1
        entries.append(
            {"filename": f"{k}.png", "split": "test", "imgid": imgid, "sentences": sentences}
        )
    json_path = tmp_path / "data.json"
    json_path.write_text(json.dumps({"images": entries}))
    cfg = DataConfig(dataset=f"karpathy:{json_path}:test", images=str(folder))
    dataset = open_source(cfg, 8)
    gen = torch.Generator().manual_seed(3)
    image_vecs, text_vecs = torch.randn(4, 3, generator=gen), torch.randn(8, 3, generator=gen)
    number = {text: int(text.split()[1]) for text, _ in captions}

    def tokenize(texts: list[str]) -> Texts:
        ids = torch.tensor([[number[t]] for t in texts])
        return Texts(ids, torch.ones_like(ids, dtype=torch.bool))

    result = evaluate_dataset(
        _ChosenVectors(image_vecs, text_vecs), dataset, tokenize, batch_size=3
    ).metrics
    u = F.normalize(image_vecs, dim=-1).numpy()
    v = F.normalize(text_vecs, dim=-1).numpy()
    rel = np.array([[imgid == owner for _, owner in captions] for imgid in imgids])
    i2t, t2i = _brute_force(u @ v.T, rel), _brute_force(v @ u.T, rel.T)
    for name, expected in (("i2t", i2t), ("t2i", t2i)):
        for key, value in expected.items():
            assert result[f"{name}_{key}"] == pytest.approx(value), (name, key)
    assert 0 < t2i["R@1"] < 100 and 0 < i2t["mAP"] < 100  # a ranking with mistakes
