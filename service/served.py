"""A model version as served: its runtime, its queue (batcher or scheduler) and its v2 description."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.batcher import DynamicBatcher
from service.metrics import Metrics
from service.runtime import ClassifierRuntime, SessionOptions
from service.settings import Settings
from service.translator import DecodeOptions, Translation, TranslatorRuntime

WARMUP_TEXTS = ["warm up", "a slightly longer text to warm up the graph with more steps"]


class WorkQueue(Protocol):
    max_queue: int

    @property
    def depth(self) -> int: ...

    def submit(self, payloads: Sequence[Any], lengths: Sequence[int],
               deadline: float | None = None) -> list[asyncio.Future[Any]]: ...

    async def close(self, timeout: float) -> None: ...


@dataclass
class Output:
    name: str
    datatype: str
    shape: list[int]


class ServedModel:
    """What every served model shares; subclasses add the kind-specific calls."""

    kind: str
    queue: WorkQueue

    def __init__(self, name: str, version_dir: Path, config: dict[str, Any]) -> None:
        self.name, self.version_dir, self.config = name, version_dir, config
        self.version = int(version_dir.name)

    @property
    def provider(self) -> str:
        raise NotImplementedError

    def v2_inputs(self) -> list[dict[str, Any]]:
        return [{"name": "text", "datatype": "BYTES", "shape": [-1]}]

    def v2_outputs(self) -> list[Output]:
        raise NotImplementedError

    def v2_tensors(self, results: Sequence[Any]) -> dict[str, tuple[list[Any], list[int]]]:
        """Output name -> (flat data, shape) for a v2 infer response."""
        raise NotImplementedError

    metrics: Metrics | None = None  # set by start()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def prepare(self, texts: Sequence[str],
                payload: Callable[[list[int]], Any] | None = None) -> tuple[list[Any], list[int]]:
        """What to queue for each text, and the length the batcher groups it by."""
        raise NotImplementedError

    def count_input_tokens(self, seqs: Sequence[Sequence[int]]) -> None:
        if self.metrics is not None:
            self.metrics.tokens.labels(self.name, "input").inc(sum(len(s) for s in seqs))

    def warm_up(self) -> None:
        raise NotImplementedError

    def start(self, settings: Settings, metrics: Metrics) -> None:
        """Create the work queue (needs the running event loop)."""
        raise NotImplementedError


class ServedClassifier(ServedModel):
    kind = "classifier"

    def __init__(self, name: str, version_dir: Path, config: dict[str, Any], opts: SessionOptions) -> None:
        super().__init__(name, version_dir, config)
        self.runtime = ClassifierRuntime(version_dir, config, opts)
        self.labels = self.runtime.labels

    @property
    def provider(self) -> str:
        return self.runtime.provider

    def start(self, settings: Settings, metrics: Metrics) -> None:
        self.metrics = metrics
        self.queue = DynamicBatcher(self.name, self.run, metrics, settings.max_batch_size,
                                    settings.max_queue_delay_ms / 1000, settings.max_queue_size)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.runtime.encode(texts)

    def prepare(self, texts: Sequence[str],
                payload: Callable[[list[int]], Any] | None = None) -> tuple[list[Any], list[int]]:
        # Texts are queued as they are and tokenized on the compute thread, one call per batch, so the event
        # loop only handles HTTP; their length in characters stands in for tokens when batches are grouped.
        return list(texts), [len(t) for t in texts]

    def run(self, texts: list[str]) -> list[dict[str, Any]]:
        seqs = self.encode(texts)
        self.count_input_tokens(seqs)
        probs = self.runtime.run_ids(seqs)
        return [self.result(p) for p in probs]

    def result(self, probs: np.ndarray) -> dict[str, Any]:
        best = int(probs.argmax())
        return {"label": self.labels[best], "score": float(probs[best]),
                "probabilities": {label: float(p) for label, p in zip(self.labels, probs, strict=True)}}

    def warm_up(self) -> None:
        self.run(WARMUP_TEXTS)

    def v2_outputs(self) -> list[Output]:
        return [Output("label", "BYTES", [-1]), Output("score", "FP32", [-1]),
                Output("probabilities", "FP32", [-1, len(self.labels)])]

    def v2_tensors(self, results: Sequence[Any]) -> dict[str, tuple[list[Any], list[int]]]:
        n = len(results)
        return {
            "label": ([r["label"] for r in results], [n]),
            "score": ([r["score"] for r in results], [n]),
            "probabilities": ([r["probabilities"][label] for r in results for label in self.labels],
                              [n, len(self.labels)]),
        }


@dataclass(frozen=True)
class TranslateItem:
    src_ids: list[int]
    options: DecodeOptions


class ServedTranslator(ServedModel):
    kind = "translator"

    def __init__(self, name: str, version_dir: Path, config: dict[str, Any], opts: SessionOptions) -> None:
        super().__init__(name, version_dir, config)
        self.runtime = TranslatorRuntime(version_dir, config, opts)

    @property
    def provider(self) -> str:
        return self.runtime.provider

    def start(self, settings: Settings, metrics: Metrics) -> None:
        from service.scheduling import make_translation_queue

        self.metrics = metrics
        self.queue = make_translation_queue(self, settings, metrics)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.runtime.encode(texts)

    def prepare(self, texts: Sequence[str],
                payload: Callable[[list[int]], Any] | None = None) -> tuple[list[Any], list[int]]:
        """Tokenized here: admission budgets source tokens. `payload` wraps the ids (TranslateItem)."""
        if payload is None:
            raise TypeError("a translator needs the decoding options of each text (payload)")
        seqs = self.encode(texts)
        self.count_input_tokens(seqs)
        return [payload(s) for s in seqs], [len(s) for s in seqs]

    def run(self, items: list[TranslateItem]) -> list[Translation]:
        """Static batching: the whole batch decodes together."""
        hyps = self.runtime.decode_ids([i.src_ids for i in items], [i.options.factory() for i in items])
        return [self.runtime.finish(i.src_ids, h) for i, h in zip(items, hyps, strict=True)]

    def warm_up(self) -> None:
        seqs = self.encode(WARMUP_TEXTS)
        self.run([TranslateItem(s, DecodeOptions(beam_size=2, max_tokens=8)) for s in seqs])

    def v2_outputs(self) -> list[Output]:
        return [Output("translation", "BYTES", [-1]), Output("score", "FP32", [-1])]

    def v2_tensors(self, results: Sequence[Any]) -> dict[str, tuple[list[Any], list[int]]]:
        n = len(results)
        return {"translation": ([r.text for r in results], [n]), "score": ([r.score for r in results], [n])}


def build_model(name: str, version_dir: Path, config: dict[str, Any], settings: Settings) -> ServedModel:
    """Create sessions and warm up (blocking: call it off the event loop)."""
    needed = [*config["graphs"].values(), *config["tokenizers"].values()]
    missing = sorted({name for name in needed if not (version_dir / name).is_file()})
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}")
    opts = SessionOptions(settings.device, settings.intra_op_threads, settings.graph_optimization,
                          settings.intra_op_spinning)
    cls = ServedClassifier if config["kind"] == "classifier" else ServedTranslator
    model = cls(name, version_dir, config, opts)
    model.warm_up()
    return model
