"""Which tower carries binding? Probe the frozen features of each tower for the (digit, colour)
of the first and second object in reading order (the information a swap negative changes).

- text: an attention-pool head on the frozen MiniLM token states of the positive captions
  (templates list the objects in either order, so it must read the relation and which colour
  word goes with which digit word);
- image: an attention-pool head on the frozen, pre-trained image tower's token grid.

Trained on the train split, scored on the test split: 60-way (digit, colour) accuracy per object
(chance 1.7 %) and the two-object "binding" accuracy (both objects right). Run from the
worktree root::

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD/src .venv/bin/python \
        benchmarks/diagnostics/binding_probe.py --set data.cache_dir=/work/main/.cache/hardneg
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from hardneg.bench.presets import PRESETS, run_config
from hardneg.models.heads import AttentionPoolHead
from hardneg.train.config import config_from_dict, parse_overrides
from hardneg.train.trainer import Trainer


def targets(split) -> torch.Tensor:
    """(N, 2) class 6·digit + colour of objects 0 and 1 in reading order."""
    s = split.scenes
    d, c = torch.as_tensor(s.digits[:, :2]), torch.as_tensor(s.colours[:, :2])
    return d * 6 + c


def fit_probe(get, n_train, y_train, get_test, y_test, in_dim, steps, seed=0):
    """Train an attention-pool head (2 × 60 logits) on ``get(idx)`` tokens; test accuracy."""
    torch.manual_seed(seed)
    head = AttentionPoolHead(in_dim, 120, width=128, num_layers=1)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(steps):
        idx = torch.randint(0, n_train, (128,))
        tokens, mask = get(idx)
        logits = head(tokens, mask).view(-1, 2, 60)
        loss = F.cross_entropy(logits.reshape(-1, 60), y_train[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        idx = torch.arange(len(y_test))
        tokens, mask = get_test(idx)
        pred = head(tokens, mask).view(-1, 2, 60).argmax(-1)
    right = pred == y_test
    return {
        "obj0": round(100 * right[:, 0].float().mean().item(), 1),
        "obj1": round(100 * right[:, 1].float().mean().item(), 1),
        "both": round(100 * right.all(1).float().mean().item(), 1),
        "obj0_digit": round(100 * (pred[:, 0] // 6 == y_test[:, 0] // 6).float().mean().item(), 1),
        "obj0_colour": round(100 * (pred[:, 0] % 6 == y_test[:, 0] % 6).float().mean().item(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--which", default="text,image,text_input")
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    with tempfile.TemporaryDirectory() as out:
        values = run_config(PRESETS["compositional"], "negclip", 0, Path(out), overrides)
        trainer = Trainer(config_from_dict(values))
    bank, train, test = trainer.bank, trainer.splits["train"], trainer.splits["test"]
    y_tr, y_te = targets(train), targets(test)
    result = {}

    def text_getter(split, gen_caption):
        def get(idx):
            col = torch.randint(0, split.caption_rows.shape[1], (len(idx),)) if gen_caption else 0
            rows = split.caption_rows[idx, col]
            out = bank.take(rows)
            return out.tokens, out.mask

        return get

    which = args.which.split(",")
    if "text" in which:
        result["text_minilm_states"] = fit_probe(
            text_getter(train, True), len(train), y_tr, text_getter(test, False), y_te,
            bank.tokens.shape[-1], args.steps,
        )  # fmt: skip
        print(json.dumps(result), flush=True)
    if "text_input" in which:  # word embeddings + learned positions only: no MiniLM context
        emb = trainer.tower.input_embedding()

        def input_getter(split, gen_caption):
            def get(idx):
                rows = split.caption_rows[idx, 0]
                if gen_caption:
                    rows = split.caption_rows[
                        idx, torch.randint(0, split.caption_rows.shape[1], (len(idx),))
                    ]
                out = bank.take(rows)
                with torch.no_grad():
                    return emb(out.input_ids.long()).float(), out.mask

            return get

        result["text_minilm_input_embeddings"] = fit_probe(
            input_getter(train, True), len(train), y_tr, input_getter(test, False), y_te,
            emb.embedding_dim, args.steps,
        )  # fmt: skip
        print(json.dumps(result), flush=True)
    if "image" in which:
        ftr, fte = train.image_features, test.image_features

        def img_getter(feats):
            return lambda idx: (feats.tokens[idx], None)

        result["image_frozen_tower_tokens"] = fit_probe(
            img_getter(ftr), len(train), y_tr, img_getter(fte), y_te, ftr.tokens.shape[-1],
            args.steps,
        )  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
