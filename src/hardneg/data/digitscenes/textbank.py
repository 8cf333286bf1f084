"""Frozen-text-tower features for every caption string, computed once and cached on disk.

The text tower (MiniLM) is frozen, so each distinct caption is encoded once; training and
evaluation then gather token states by caption index and only the projection head and the
cross-modal transformer run per step. The cache file is keyed by the tower's weights, the
caption list and the token length, and written atomically with a SHA-256 checksum next to it
(``<key>.pt.sha256``); the checksum is verified once per process before the file is memory-
mapped, and a file that fails it (or has none) is rebuilt with a warning naming it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from hardneg.data.atomic_files import atomic_write, remove_stale_temps
from hardneg.data.checksums import file_sha256, mark_verified, verified_in_process
from hardneg.data.fingerprint import content_fingerprint, module_fingerprint
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

    def vocabulary(self, exclude: tuple[int, ...] = ()) -> tuple[int, ...]:
        """The sorted token ids the captions use (real tokens only), without ``exclude``."""
        ids = torch.unique(self.input_ids[self.mask])
        return tuple(int(i) for i in ids[~torch.isin(ids, torch.tensor(exclude, dtype=ids.dtype))])

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


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _load_cached(path: Path) -> TextBank | None:
    """The bank cached at ``path`` if its checksum verifies (warn and delete it otherwise)."""
    problem = None
    checksum = _checksum_path(path)
    if not verified_in_process([path]):
        expected = checksum.read_text().strip() if checksum.is_file() else None
        if expected is None:
            problem = f"has no checksum file {checksum.name} (interrupted write or old version)"
        elif file_sha256(path) != expected:
            problem = f"does not match its checksum in {checksum.name} (corrupt)"
        else:
            mark_verified([path])
    if problem is None:
        try:  # memory-mapped: only the rows a run touches are read
            return TextBank(**torch.load(path, weights_only=True, mmap=True))
        except Exception as err:
            problem = f"cannot be loaded ({type(err).__name__}: {err})"
    warnings.warn(f"text-bank cache {path} {problem}; rebuilding it", RuntimeWarning, stacklevel=3)
    path.unlink(missing_ok=True)
    checksum.unlink(missing_ok=True)
    return None


def _cached(cache_dir: str | Path | None, name: str) -> tuple[Path | None, TextBank | None]:
    """The cache file ``<cache_dir>/text/<name>.pt`` (None without a cache) and the bank in it
    when there is one that verifies."""
    if cache_dir is None:
        return None, None
    path = Path(cache_dir) / "text" / f"{name}.pt"
    remove_stale_temps(path.parent)
    return path, (_load_cached(path) if path.is_file() else None)


def _save(path: Path, state: dict[str, object]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))
    digest = file_sha256(path)
    atomic_write(_checksum_path(path), lambda f: f.write(f"{digest}\n".encode()))
    mark_verified([path])


@torch.no_grad()
def encode_bank(
    tower: TextTower,
    texts: list[str],
    max_len: int,
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> TextBank:
    """Encode distinct ``texts`` with a frozen ``tower`` (padded to ``max_len``), with a cache.

    With ``cache_dir``, the bank is read from (or written to) ``<cache_dir>/text/<key>.pt``;
    a cache file that fails its checksum is rebuilt (``RuntimeWarning`` naming it).
    """
    texts = list(dict.fromkeys(texts))
    key = content_fingerprint(module_fingerprint(tower), texts, max_len)
    path, bank = _cached(cache_dir, key)
    if bank is not None:
        return bank
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
        _save(path, state)
    return bank


@torch.no_grad()
def encode_masked(
    tower: TextTower,
    bank: TextBank,
    rows: Tensor,
    chosen: Tensor,
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> TextBank:
    """The bank's captions ``rows`` ``(N,)`` encoded by the frozen ``tower`` with the tokens at
    ``chosen`` ``(N, L)`` replaced by the tokenizer's [MASK] *before* the tower (so no state
    carries a masked word: the MLM inputs of ALBEF's fusion, ``AlignmentModel.mlm_loss``).
    Row ``n`` of the result is caption ``rows[n]`` masked at ``chosen[n]`` (``input_ids`` hold
    the [MASK] ids; ``texts`` the original captions). Cached like :func:`encode_bank`, keyed by
    the tower's weights and the masked ids."""
    mask_id = tower.mask_token_id
    if mask_id is None:
        raise ValueError(f"{type(tower).__name__}'s tokenizer has no [MASK] token")
    ids = bank.input_ids[rows].masked_fill(chosen, mask_id)
    mask = bank.mask[rows]
    key = content_fingerprint(module_fingerprint(tower), ids, mask)
    path, cached = _cached(cache_dir, f"masked-{key}")
    if cached is not None:
        return cached
    n = len(rows)
    tokens = torch.zeros(n, ids.shape[1], tower.token_dim, dtype=torch.float16)
    pooled = torch.zeros(n, tower.pooled_dim)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="encoding masked captions", disable=not progress, leave=False):
        sl = slice(start, start + batch_size)
        length = max(1, int(mask[sl].sum(dim=1).max()))
        out = tower(ids[sl, :length], mask[sl, :length].long())
        tokens[sl, :length] = out.tokens.cpu().half()
        pooled[sl] = out.pooled.cpu().float()
    texts = [bank.texts[i] for i in rows.tolist()]
    masked = TextBank(texts, tokens, mask, ids, pooled)
    if path is not None:
        state = {"texts": texts, "tokens": tokens, "mask": mask, "input_ids": ids, "pooled": pooled}
        _save(path, state)
    return masked
