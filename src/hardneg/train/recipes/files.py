"""Your own data with your own CLIP: a map-style image–caption source (Karpathy JSON, CSV, a
Hugging Face dataset; see ``docs/data.md``) and a model spec (``builtin``, ``open_clip:NAME``,
``hf_clip:DIR``; see ``docs/models.md``) as a recipe of the training engine.

- Items are images; an image's captions are positives of each other (same image ⇒ same id).
  A step draws one caption per image, uniformly.
- Hard-negative captions (NegCLIP extras, ``data.hard_negative_captions``): a rule-based
  perturbation of the drawn caption (``data.negatives="perturb"``: swapped attributes / nouns,
  a flipped relation; :mod:`hardneg.data.perturb`) or the source's own column; a caption no
  rule applies to gets the caption of an image outside the step's batch instead (an ordinary
  negative: inside the batch it would be a false negative of its own image).
- The text tower runs every step on the drawn captions' token ids (trained unless
  ``model.freeze_text_tower``; the builtin MiniLM is always frozen); images are decoded and
  resized to the model's resolution when a micro-batch is built.
- The cross-modal head (ITM / CLA / MLM, FALCON's reward) reads the towers' token states and
  is built only when the method has a cross-modal term.
- Meanings beyond the image are unknown on real data: no false-negative diagnostics.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.data.compositional import load_compositional
from hardneg.data.dataset import ImageCaptionDataset
from hardneg.data.digitscenes import PRESETS, DigitScenesDataset, load_digitscenes
from hardneg.data.perturb import perturbations
from hardneg.data.sources import check_data_config, open_source
from hardneg.data.specs import default_eval_spec, parse_data_spec
from hardneg.eval.datasets import evaluate_dataset
from hardneg.eval.runner import SplitEvaluation
from hardneg.models.alignment import AlignmentModel
from hardneg.models.clip_towers import build_clip_towers, export_clip
from hardneg.models.dual import DualEncoder
from hardneg.models.freeze import freeze
from hardneg.models.image import ImageTowerConfig, build_image_tower
from hardneg.models.inputs import Images, Texts
from hardneg.models.minilm import MiniLMTextTower
from hardneg.models.specs import parse_model_spec
from hardneg.samplers import shard
from hardneg.train.batch import Batch, StepDraw, mlm_normaliser
from hardneg.train.builders import build_crossmodal
from hardneg.train.config import TrainConfig
from hardneg.train.recipes import BatchSampler

#: side of the builtin image tower's input on real data
BUILTIN_IMAGE_SIZE = 64


def pick(n: int, generator: torch.Generator) -> int:
    """A uniform draw from ``range(n)`` with ``generator``."""
    return int(torch.randint(0, n, (1,), generator=generator))


class FilesRecipe:
    """A real-data source and a (CLIP) model for :class:`~hardneg.train.loop.Engine`.

    Args:
        cfg: the run's configuration (``data.dataset`` a karpathy / csv / hf spec).
        device: where the model runs.
        crossmodal: build the cross-modal head (the objective has ITM / CLA / MLM terms).
    """

    #: no weight decay on gains, biases, norms and the temperature (open_clip's fine-tuning rule)
    exclude_from_decay = True
    #: map-style data: the engine's batch sampler indexes it (a stream sets its own)
    batch_sampler: BatchSampler | None = None

    def __init__(self, cfg: TrainConfig, device: torch.device, crossmodal: bool) -> None:
        self.cfg, self.device = cfg, device
        self.data_spec = check_data_config(cfg.data)
        self.model_spec = parse_model_spec(cfg.model.spec, cfg.model.pretrained)
        self.towers = None
        if self.model_spec.kind == "builtin":
            text_tower = MiniLMTextTower(cfg.data.text_model, max_length=cfg.data.max_text_len)
            tower_cfg = ImageTowerConfig(
                arch=cfg.model.image_tower,
                image_size=BUILTIN_IMAGE_SIZE,
                width=cfg.model.image_width,
            )
            image_tower, image_size, embed_dim = (
                build_image_tower(tower_cfg),
                BUILTIN_IMAGE_SIZE,
                cfg.model.embed_dim,
            )
            self.logit_scale: float | None = None
            reloaded: tuple[str, ...] = ("dual.text_tower.",)
        else:
            self.towers = build_clip_towers(self.model_spec)
            image_tower, text_tower = self.towers.image_tower, self.towers.text_tower
            image_size, embed_dim = self.towers.image_size, None  # CLIP's own projections
            self.logit_scale = self.towers.logit_scale
            reloaded = ()
            freeze(text_tower, cfg.model.freeze_text_tower)
        freeze(image_tower, cfg.model.freeze_image_tower)
        self.text_tower = text_tower
        self.image_size = image_size
        self.dataset = self._train_source()
        dual = DualEncoder(image_tower, text_tower, embed_dim=embed_dim)
        cross = None
        if crossmodal:
            cross = build_crossmodal(cfg.model, text_tower, image_tower, self._max_text_len())
        self.model = AlignmentModel(
            dual, cross, reloaded_prefixes=reloaded, crossmodal_input=cfg.model.crossmodal_input
        ).to(device)
        self.caption_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self._pool: ThreadPoolExecutor | None = None

    def _train_source(self) -> Any:
        """The training data (a map-style dataset here; a stream in the stream recipe)."""
        dataset = self._open(None, "train")
        if self.cfg.data.hard_negative_captions and len(dataset) <= self.cfg.batch_size:
            raise ValueError(
                f"data.hard_negative_captions with {len(dataset)} images and batch_size="
                f"{self.cfg.batch_size}: a caption without a hard negative takes an image's "
                "caption from outside the batch, and none is left; use a batch_size below the "
                "image count"
            )
        return dataset

    def _open(self, spec: str | None, split: str) -> ImageCaptionDataset:
        """The source ``spec`` (default ``data.dataset``); DigitScenes' ``split`` as an
        image–caption dataset whose hard negatives are the scenes' own."""
        parsed = parse_data_spec(spec or self.cfg.data.dataset)
        if parsed.kind != "digitscenes":
            return open_source(self.cfg.data, self.image_size, spec=spec)
        d = self.cfg.data
        config = replace(PRESETS[parsed.preset or d.preset], seed=d.seed)
        scenes = load_digitscenes(config, cache_dir=d.cache_dir, splits=(split,))[split]
        dataset = DigitScenesDataset(scenes)
        dataset.negatives = [[h.caption for h in negs] for negs in scenes.hard_negatives]
        return dataset

    def _max_text_len(self) -> int:
        return int(getattr(self.text_tower, "context_length", None) or self.cfg.data.max_text_len)

    # ----------------------------------------------------------------------------- batches
    def train_size(self) -> int:
        return len(self.dataset)

    def semantic_ids(self) -> None:
        """None: the batch diagnostics do not count meanings here."""
        return None

    @staticmethod
    def perturbed(caption: str) -> list[str]:
        """The rule-based hard negatives of ``caption`` (:mod:`hardneg.data.perturb`)."""
        return [p.caption for p in perturbations(caption)]

    def _hard_negatives(self, index: Tensor, captions: list[str]) -> list[str]:
        """One hard-negative caption per drawn caption of the batch ``index`` (see the module
        docstring); the fallback comes from an image whose id is not in the batch."""
        column = getattr(self.dataset, "negatives", None)
        outside = None
        out = []
        for item, caption in zip(index.tolist(), captions):
            if column is not None and column[item]:
                options = list(column[item])
            else:
                options = self.perturbed(caption)
            if options:
                out.append(options[pick(len(options), self.caption_gen)])
                continue
            if outside is None:
                ids = np.asarray(self.dataset.semantic_ids)
                outside = np.flatnonzero(~np.isin(ids, ids[index.numpy()]))
            other = int(outside[pick(len(outside), self.caption_gen)])
            out.append(self.dataset.captions[other][0])
        return out

    def _tokens(self, texts: list[str]) -> Texts:
        tok = self.text_tower.tokenize(texts)
        return Texts(tok["input_ids"], tok["attention_mask"].bool())

    def _captions(self, captions: list[str], step: int, negatives) -> dict[str, Any]:
        """Tokens of the drawn ``captions``, of their hard negatives (``negatives(captions)``)
        when the method uses them, and the step's MLM targets."""
        payload: dict[str, Any] = {"text": self._tokens(captions)}
        if self.cfg.data.hard_negative_captions:
            payload["hard"] = self._tokens(negatives(captions))
        text = payload["text"]
        if self.model.crossmodal is not None:
            gen = torch.Generator().manual_seed(int(self.cfg.seed * 1_000_003 + step))
            payload["mlm_chosen"] = self.model.crossmodal.choose_mask(text, generator=gen)
        else:
            payload["mlm_chosen"] = torch.zeros_like(text.mask)
        return payload

    def draw(self, index: Tensor, step: int) -> StepDraw:
        """A caption (and a hard negative when the method uses them) per image; MLM targets."""
        items = index.tolist()
        captions = []
        for item in items:
            options = self.dataset.captions[item]
            captions.append(options[pick(len(options), self.caption_gen)])
        payload = self._captions(captions, step, lambda caps: self._hard_negatives(index, caps))
        payload["ids"] = torch.as_tensor(self.dataset.semantic_ids)[index]
        return StepDraw(index, None, payload)

    @staticmethod
    def _shard_texts(texts: Texts, part: slice, sl: slice, device) -> Texts:
        ids, mask = texts.input_ids[part][sl], texts.mask[part][sl]
        length = max(1, int(mask.sum(dim=1).max()))  # the shard's longest caption
        return Texts(ids[:, :length], mask[:, :length]).to(device)

    def _images(self, items: list[int]) -> Tensor:
        """Decoded, resized images of ``items`` (``data.workers`` threads decode in parallel;
        PIL releases the GIL while decoding; the order is kept)."""
        if self.cfg.data.workers > 0:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.cfg.data.workers)
            images = list(self._pool.map(self.dataset.load_image, items))
        else:
            images = [self.dataset.load_image(i) for i in items]
        return torch.stack(images).to(self.device)

    def batch(self, draw: StepDraw, part: slice, rank: int, world: int) -> Batch:
        p, device = draw.payload, self.device
        index = draw.index[part]
        local = torch.tensor(shard(index.tolist(), rank, world))
        sl = slice(rank * len(local), (rank + 1) * len(local))
        text = self._shard_texts(p["text"], part, sl, device)
        hard = self._shard_texts(p["hard"], part, sl, device) if "hard" in p else None
        chosen = p["mlm_chosen"][part]
        return Batch(
            index=index,
            local=local,
            ids=p["ids"][part][sl].to(device),
            images=Images(pixels=self._images(local.tolist())),
            text=text,
            mlm_chosen=chosen[sl, : text.mask.shape[1]].to(device),
            mlm_targets=mlm_normaliser(chosen, world, device),
            hard_text=hard,
        )

    @torch.no_grad()
    def embed_untrained(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Store embeddings (image, first caption) of items an epoch never trained on."""
        model = self.model
        was_training = model.training
        model.eval()
        texts = self._tokens([self.dataset.captions[i][0] for i in index.tolist()])
        u, _ = model.encode_images(Images(pixels=self._images(index.tolist())))
        v, _ = model.encode_texts(
            Texts(texts.input_ids.to(self.device), texts.mask.to(self.device))
        )
        model.train(was_training)
        return F.normalize(u.float(), dim=-1).cpu(), F.normalize(v.float(), dim=-1).cpu()

    # ---------------------------------------------------------------------------- evaluation
    def evaluate(
        self, spec: str | None = None, compositional: str | None = None
    ) -> dict[str, SplitEvaluation]:
        """Multi-positive retrieval as split ``"test"`` on ``spec`` — by default
        ``data.eval_dataset``, else a Karpathy JSON's ``test`` split or DigitScenes' test split,
        else nothing — with compositional accuracy on a JSON of probes when given one."""
        probes = None
        if compositional is not None:
            probes = load_compositional(compositional, self.cfg.data.images, self.image_size)
        spec = spec or default_eval_spec(self.cfg.data)
        if spec is None and self.data_spec.kind != "digitscenes":
            return {}
        dataset = self._open(spec, "test")
        evaluation = evaluate_dataset(
            self.model,
            dataset,
            self._tokens,
            self.device,
            probes,
            progress=self.cfg.progress,
            rerank_k=self.cfg.rerank_k,
        )
        return {"test": evaluation}

    def export(self, out_dir: Path, logit_scale: float) -> Path | None:
        """Write the trained logit scale back into the CLIP model and save it in its own
        library's format (None for the builtin model)."""
        if self.towers is None:
            return None
        return export_clip(self.towers, out_dir, logit_scale)

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"caption_gen": self.caption_gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.caption_gen.set_state(state["caption_gen"])
