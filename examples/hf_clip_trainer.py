"""Train a transformers ``CLIPModel`` with ``HardnegCLIPTrainer`` and hardneg's EGA loss.

The loss owns a learnable temperature that the Trainer optimises with the model; ``--bns K``
scores only K negatives per anchor picked by BACL's boundary-aware sampler. A tiny randomly
initialised CLIP learns to match 32 random images to 32 random token sequences.

    python examples/hf_clip_trainer.py --max-steps 10
    python examples/hf_clip_trainer.py --max-steps 10 --bns 3
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from datasets import Dataset
from transformers import CLIPConfig, CLIPModel, TrainingArguments

from hardneg.integrations.hf_trainer import HardnegCLIPTrainer, RetrievalMetrics
from hardneg.losses import EGALoss
from hardneg.miners import BNSConfig, BoundaryAwareMiner


def tiny_clip_config() -> CLIPConfig:
    """1-layer CLIP: 32×32 images in 8×8 patches, 16-token captions, width 32."""
    return CLIPConfig(
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


def random_pairs(rows: int, seed: int = 0) -> Dataset:
    """Random images and token sequences ending with the EOS token (CLIP pools there)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, 100, (rows, 12), generator=g)
    input_ids[:, -1] = 1
    pixel_values = torch.randn(rows, 3, 32, 32, generator=g)
    data = {"pixel_values": pixel_values.numpy(), "input_ids": input_ids.numpy()}
    return Dataset.from_dict(data).with_format("torch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--bns", type=int, default=0, help="select K negatives with BNS (0: all)")
    parser.add_argument(
        "--ega-literal",
        action="store_true",
        help="EGA's literal (not renormalised) form; unstable from scratch (default: EGALoss's)",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    loss = EGALoss(alpha=1.0, **({"renormalize": False} if args.ega_literal else {}))
    miner = BoundaryAwareMiner(BNSConfig(k=args.bns)) if args.bns else None
    with tempfile.TemporaryDirectory() as tmp:
        trainer = HardnegCLIPTrainer(
            model=CLIPModel(tiny_clip_config()),
            args=TrainingArguments(
                output_dir=tmp,
                max_steps=args.max_steps,
                per_device_train_batch_size=8,
                learning_rate=1e-3,
                logging_steps=1,
                save_strategy="no",
                report_to=[],
                use_cpu=True,
                seed=0,
            ),
            train_dataset=random_pairs(32),
            loss=loss,
            miner=miner,
            compute_metrics=RetrievalMetrics(ks=(1, 5)),
        )
        scale_before = float(loss.scale())
        trainer.train()
        metrics = trainer.evaluate(random_pairs(16, seed=1))
    history = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    print(f"training loss: first {history[0]:.4f}  last {history[-1]:.4f}")
    print(f"loss temperature 1/τ: {scale_before:.3f} -> {float(loss.scale()):.3f}")
    print(f"eval: loss {metrics['eval_loss']:.4f}  image→text R@1 {metrics['eval_i2t_R@1']:.1f}%")


if __name__ == "__main__":
    main()
