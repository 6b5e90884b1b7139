"""Length-bucketed batches: similar lengths together so padding stays small."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from service.engine.text import pad_batch

T = TypeVar("T")


def bucket_batches(items: Sequence[T], batch_size: int, length: Callable[[T], int], seed: int,
                   shuffle: bool = True) -> list[list[T]]:
    """Shuffle, sort within windows of 50 batches by length, cut into batches, shuffle the batches."""
    order = list(items)
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=length)
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    if shuffle:
        rng.shuffle(batches)
    return batches


def to_tensors(seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Padded ids (B, T) and lengths (B,) as int64 tensors."""
    ids, lengths = pad_batch(seqs)
    return torch.from_numpy(ids), torch.from_numpy(lengths)
