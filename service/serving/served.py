"""A model version as served: the contract every kind's served model keeps (`ServedModel`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.batching.batcher import DynamicBatcher
from service.batching.queue import WorkQueue
from service.batching.scheduler import ContinuousScheduler, IterationEngine
from service.engine.sessions import SessionOptions
from service.metrics import Metrics
from service.serving.cache import ResponseCache
from service.settings import Settings

WARMUP_TEXTS = ["warm up", "a slightly longer text to warm up the graph with more steps"]


@dataclass
class Output:
    name: str
    datatype: str
    shape: list[int]


class ServedModel:
    """What the request path, the manager and the v2 routes need of a served model version, whatever its kind.

    A kind subclasses it once (`service/serving/<kind>.py`) and registers the class in `service/serving/kinds.py`.
    `options` are the kind's per-request options (decoding settings for a translator, None for a classifier),
    made by the kind's API module from the request body or the v2 parameters."""

    kind: str
    queue: WorkQueue
    metrics: Metrics | None = None  # set by start()
    cache: ResponseCache | None = None  # the server's response cache, set by the manager

    def cacheable(self, options: Any) -> bool:
        """Whether answers for these options may be reused (the same text always gets the same answer)."""
        return True

    def segment(self, texts: Sequence[str], options: Any) -> tuple[list[str], Any]:
        """The units queued for `texts` (each text by default; a translator's sentences) and what `combine` needs
        to put their answers back together."""
        return list(texts), None

    def combine(self, texts: Sequence[str], answers: list[Any], plan: Any) -> list[Any]:
        """One answer per text from the units' answers."""
        return answers

    def __init__(self, name: str, version_dir: Path, config: dict[str, Any], opts: SessionOptions) -> None:
        self.name, self.version_dir, self.config = name, version_dir, config
        self.version = int(version_dir.name)

    @property
    def provider(self) -> str:
        raise NotImplementedError

    def start(self, settings: Settings, metrics: Metrics) -> None:
        """Create the work queue (needs the running event loop)."""
        raise NotImplementedError

    def prepare(self, texts: Sequence[str], options: Any) -> tuple[list[Any], list[int]]:
        """What to queue for each text, and the length the queue groups it by."""
        raise NotImplementedError

    def warm_up(self) -> None:
        raise NotImplementedError

    def v2_inputs(self) -> list[dict[str, Any]]:
        return [{"name": "text", "datatype": "BYTES", "shape": [-1]}]

    def v2_outputs(self) -> list[Output]:
        raise NotImplementedError

    def v2_output_names(self, options: Any) -> list[str]:
        """The outputs an infer request with these options gets when it names none (and the most it may name)."""
        return [o.name for o in self.v2_outputs()]

    def v2_tensors(self, results: Sequence[Any]) -> dict[str, tuple[list[Any], list[int]]]:
        """Output name -> (flat data, shape) for a v2 infer response."""
        raise NotImplementedError

    def count_input_tokens(self, seqs: Sequence[Sequence[int]]) -> None:
        if self.metrics is not None:
            self.metrics.tokens.labels(self.name, "input").inc(sum(len(s) for s in seqs))


class OneShotModel(ServedModel):
    """A kind answered by one runtime call per batch (classifier, tagger): texts are queued on the dynamic batcher as
    they are and tokenized on its compute thread, one call per batch, so the event loop only handles HTTP; their
    length in characters stands in for tokens when batches are grouped. A subclass sets `runtime` and `run`."""

    runtime: Any

    @property
    def provider(self) -> str:
        return str(self.runtime.provider)

    def start(self, settings: Settings, metrics: Metrics) -> None:
        self.metrics = metrics
        self.queue = DynamicBatcher(self.name, self.run, metrics, settings.max_batch_size,
                                    settings.max_queue_delay_ms / 1000, settings.max_queue_size)

    def prepare(self, texts: Sequence[str], options: Any) -> tuple[list[Any], list[int]]:
        return list(texts), [len(t) for t in texts]

    def run(self, texts: list[str]) -> list[dict[str, Any]]:
        raise NotImplementedError


class DecodingModel(ServedModel):
    """A kind decoded step by step (translator, language model): by default on the iteration-level scheduler, which
    drives the kind's `engine`; `--scheduler static|none` queue on the dynamic batcher instead, whose `run` decodes a
    whole batch (of one, with none). A subclass sets `runtime`, `engine` and `run`."""

    runtime: Any

    @property
    def provider(self) -> str:
        return str(self.runtime.provider)

    def engine(self, settings: Settings, metrics: Metrics) -> IterationEngine:
        raise NotImplementedError

    def run(self, items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def start(self, settings: Settings, metrics: Metrics) -> None:
        self.metrics = metrics
        if settings.scheduler == "continuous":
            self.queue = ContinuousScheduler(self.name, self.engine(settings, metrics), metrics,
                                             settings.max_active_rows, settings.max_active_source_tokens,
                                             settings.max_queue_size)
        else:
            batch = 1 if settings.scheduler == "none" else settings.max_batch_size
            self.queue = DynamicBatcher(self.name, self.run, metrics, batch, settings.max_queue_delay_ms / 1000,
                                        settings.max_queue_size)
