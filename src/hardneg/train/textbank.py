"""Frozen-text-tower features for every caption string, computed once and cached on disk.

The text tower (MiniLM) is frozen, so each distinct caption is encoded once; training and
evaluation then gather token states by caption index and only the projection head and the
cross-modal transformer run per step. The cache file is keyed by the tower's weights, the
caption list and the token length, and written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from hardneg.data.atomic_files import atomic_write
from hardneg.data.cache import content_fingerprint, module_fingerprint
from hardneg.models.outputs import TextOutput
from hardneg.models.text import TextTower


@dataclass
class TextBank:
    """Token states of N captions padded to ``L``: ``tokens`` fp16 (N, L, D), ``mask``,
    ``input_ids``, ``pooled`` fp32 (N, D); ``index`` maps a caption string to its row."""

    texts: list[str]
    tokens: Tensor
    mask: Tensor
    input_ids: Tensor
    pooled: Tensor

    def __post_init__(self) -> None:
        self.index = {t: i for i, t in enumerate(self.texts)}

    def rows(self, texts: list[str]) -> Tensor:
        """Row numbers of ``texts`` (``KeyError`` names a caption that was never encoded)."""
        try:
            return torch.tensor([self.index[t] for t in texts], dtype=torch.long)
        except KeyError as err:
            raise KeyError(f"caption {err.args[0]!r} is not in the text bank") from None

    def take(self, rows: Tensor, device: torch.device | str = "cpu") -> TextOutput:
        """The :class:`TextOutput` of the given rows (token states back in fp32), trimmed to
        the longest caption among them (padding beyond it carries no information)."""
        rows = rows.cpu()
        mask = self.mask[rows]
        length = max(1, int(mask.sum(dim=1).max())) if len(rows) else 1
        return TextOutput(
            tokens=self.tokens[rows, :length].to(device, torch.float32),
            mask=mask[:, :length].to(device),
            pooled=self.pooled[rows].to(device),
            input_ids=self.input_ids[rows, :length].to(device),
        )


@torch.no_grad()
def encode_bank(
    tower: TextTower,
    texts: list[str],
    max_len: int,
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> TextBank:
    """Encode distinct ``texts`` with a frozen ``tower`` (padded to ``max_len``), with a cache."""
    texts = list(dict.fromkeys(texts))
    path = None
    if cache_dir is not None:
        key = content_fingerprint(module_fingerprint(tower), texts, max_len)
        path = Path(cache_dir) / "text" / f"{key}.pt"
        if path.is_file():
            try:  # memory-mapped: only the rows a run touches are read
                return TextBank(**torch.load(path, weights_only=True, mmap=True))
            except Exception:  # corrupt cache: recompute and overwrite below
                path.unlink(missing_ok=True)
    n, dim = len(texts), tower.token_dim
    tokens = torch.zeros(n, max_len, dim, dtype=torch.float16)
    mask = torch.zeros(n, max_len, dtype=torch.bool)
    ids = torch.full((n, max_len), tower.pad_token_id, dtype=torch.long)
    pooled = torch.zeros(n, tower.pooled_dim)
    # batches of similar length waste no compute on padding
    order = sorted(range(n), key=lambda i: len(texts[i]))
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="encoding captions", disable=not progress, leave=False):
        rows = torch.tensor(order[start : start + batch_size])
        out = tower.encode_text([texts[i] for i in rows.tolist()])
        length = min(out.tokens.shape[1], max_len)
        tokens[rows, :length] = out.tokens[:, :length].cpu().half()
        mask[rows, :length] = out.mask[:, :length].cpu()
        ids[rows, :length] = out.input_ids[:, :length].cpu()
        pooled[rows] = out.pooled.cpu().float()
    bank = TextBank(texts, tokens, mask, ids, pooled)
    if path is not None:
        state = {"texts": texts, "tokens": tokens, "mask": mask, "input_ids": ids, "pooled": pooled}
        atomic_write(path, lambda f: torch.save(state, f))
    return bank
