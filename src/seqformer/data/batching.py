"""Token-based, length-bucketed batching and collation into padded tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from seqformer.config import seed_in_range

Example = tuple[list[int], list[int]]  # (source ids incl. </s>, target ids without specials)


@dataclass
class Batch:
    src: Tensor  # (B, S) source ids ending in </s>
    src_pad_mask: Tensor  # (B, S) True = padding
    tgt_in: Tensor  # (B, T) decoder input: start token + target
    tgt_out: Tensor  # (B, T) labels: target + </s>, padded with pad_id

    @property
    def n_tgt_tokens(self) -> int:
        return int((~self.tgt_out.eq(self.pad_id)).sum())

    @property
    def n_src_tokens(self) -> int:
        return int((~self.src_pad_mask).sum())

    pad_id: int = 0


def torch_seed(value: int) -> int:
    """``value`` as a seed torch takes (-2**63 to 2**64 - 1): unchanged inside that range, folded modulo 2**64
    outside it (a large --seed times the epoch stride, or plus a rank, would otherwise stop training)."""
    return value if seed_in_range(value) else value % 2**64


def bucket_batches(lengths: list[tuple[int, int]], max_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Group example indices into batches of at most ``max_tokens`` padded tokens per side.

    Examples are sorted by length (ties broken by a seeded shuffle), cut greedily
    into batches, and the batch order is shuffled; the same (seed, epoch) always
    gives the same batches, which is what makes exact resume possible.
    """
    gen = torch.Generator().manual_seed(torch_seed(seed * 1_000_003 + epoch))
    noise = torch.randperm(len(lengths), generator=gen).tolist()
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i][1], lengths[i][0], noise[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest_if_added = max(longest, *lengths[i])
        if current and longest_if_added * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest_if_added = [], max(lengths[i])
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[p] for p in perm]


def pad(seqs: list[list[int]], pad_id: int) -> Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, L)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate(examples: list[Example], pad_id: int, start_id: int, eos_id: int) -> Batch:
    """Pad a list of examples (right padding) into a :class:`Batch`."""
    src = pad([s for s, _ in examples], pad_id)  # (B, S)
    tgt_in = pad([[start_id] + t for _, t in examples], pad_id)  # (B, T)
    tgt_out = pad([t + [eos_id] for _, t in examples], pad_id)  # (B, T)
    return Batch(src=src, src_pad_mask=src.eq(pad_id), tgt_in=tgt_in, tgt_out=tgt_out, pad_id=pad_id)


def encode_source(ids: list[int], eos_id: int, max_len: int) -> list[int]:
    """Source ids with </s> appended, truncated to ``max_len`` positions."""
    return ids[: max_len - 1] + [eos_id]
