"""Train an open_clip model with hardneg's EGA loss and BACL-selected negatives.

The loss is a drop-in for open_clip's ``ClipLoss`` (same call, the model's ``logit_scale``);
``--bns K`` adds the boundary-aware negative miner hook. A tiny randomly initialised CLIP
learns to match 32 random images to 32 random token sequences.

    python examples/open_clip_ega.py --max-steps 20
    python examples/open_clip_ega.py --max-steps 20 --bns 3
"""

from __future__ import annotations

import argparse
import math

import open_clip
import torch

from hardneg.integrations.open_clip import BoundaryAwareMiner, HardnegClipLoss
from hardneg.miners import BNSConfig


def tiny_clip() -> open_clip.model.CLIP:
    """A 67k-parameter open_clip CLIP (32×32 images, 16-token captions)."""
    return open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.model.CLIPVisionCfg(
            layers=1, width=32, patch_size=8, image_size=32, head_width=16
        ),
        text_cfg=open_clip.model.CLIPTextCfg(
            context_length=16, vocab_size=1000, width=32, heads=2, layers=1
        ),
        output_dict=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bns", type=int, default=0, help="select K negatives with BNS (0: all)")
    parser.add_argument(
        "--ega-literal",
        action="store_true",
        help="EGA's literal (not renormalised) form; unstable from scratch (default: EGALoss's)",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    model = tiny_clip()
    images, texts = torch.randn(32, 3, 32, 32), torch.randint(0, 1000, (32, 16))
    ega_form = {"renormalize": False} if args.ega_literal else {}
    loss_fn = HardnegClipLoss("ega", alpha=1.0, **ega_form)  # open_clip: ClipLoss()
    miner = BoundaryAwareMiner(BNSConfig(k=args.bns)) if args.bns else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps_per_epoch = len(images) // args.batch_size

    def fixed_batch_loss() -> float:
        with torch.no_grad():
            return float(loss_fn(**model(images[:16], texts[:16])))

    before = fixed_batch_loss()
    for step in range(args.max_steps):
        batch = torch.randperm(len(images))[: args.batch_size]
        out = model(images[batch], texts[batch])  # image_features, text_features, logit_scale
        negatives = None
        if miner is not None:
            negatives = miner.mine_features(
                out["image_features"],
                out["text_features"],
                progress=step / steps_per_epoch,
                total=args.max_steps / steps_per_epoch,
            )
        losses = loss_fn(**out, negatives=negatives, output_dict=True)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        with torch.no_grad():  # as open_clip's training loop
            model.logit_scale.clamp_(0, math.log(100))
    print(f"loss on a fixed batch: before {before:.4f}  after {fixed_batch_loss():.4f}")


if __name__ == "__main__":
    main()
