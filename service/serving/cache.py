"""An exact-match response cache in front of every model's queue: a text's answer, keyed on the model, its
version, the text and the request's options, is reused instead of computed again.

Least recently used entries go first once either bound (entries or bytes) is reached; a model's entries go when
another version of it is loaded or it is unloaded. Only what the model says is deterministic for the options is
stored (a language model sampling without a seed is not). Cached answers are the very objects computed the first
time: nothing downstream modifies results."""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np

from service.metrics import Metrics

Key = tuple[str, int, str, Hashable]


def answer_bytes(value: Any, seen: set[int] | None = None) -> int:
    """About how much memory an answer holds (its strings, arrays, lists, dicts and dataclasses, each object once)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return int(value.nbytes) + 112
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        return size + sum(answer_bytes(k, seen) + answer_bytes(v, seen) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return size + sum(answer_bytes(v, seen) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return size + sum(answer_bytes(getattr(value, f.name), seen) for f in dataclasses.fields(value)
                          if f.compare)  # fields outside equality (tokenizers) are shared by every answer
    return size


class ResponseCache:
    """LRU over (model, version, text, options) -> answer, bounded by `max_entries` and `max_bytes`."""

    def __init__(self, max_entries: int, max_bytes: int, metrics: Metrics | None = None) -> None:
        self.max_entries, self.max_bytes, self.metrics = max_entries, max_bytes, metrics
        self._entries: OrderedDict[Key, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # the event loop's request path and the gRPC server's share it

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    @property
    def entries(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    @staticmethod
    def key(model: str, version: int, text: str, options: Any) -> Key | None:
        """The entry's key; None when the options cannot be one (unhashable)."""
        try:
            hash(options)
        except TypeError:
            return None
        return (model, version, text, options)

    def get(self, key: Key) -> tuple[bool, Any]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        self._count(key[0], hit=entry is not None)
        return (True, entry[0]) if entry is not None else (False, None)

    def put(self, key: Key, answer: Any) -> None:
        size = answer_bytes(answer) + answer_bytes(key[2])
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (answer, size)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
        self._gauges()

    def drop_model(self, model: str, keep_version: int | None = None) -> int:
        """Forget the model's entries (those of other versions than `keep_version`); returns how many went."""
        with self._lock:
            gone = [k for k in self._entries if k[0] == model and k[1] != keep_version]
            for k in gone:
                self._bytes -= self._entries.pop(k)[1]
        self._gauges()
        return len(gone)

    def _count(self, model: str, hit: bool) -> None:
        if self.metrics is not None:
            (self.metrics.cache_hits if hit else self.metrics.cache_misses).labels(model).inc()

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.cache_entries.set(len(self._entries))
            self.metrics.cache_bytes.set(self._bytes)
