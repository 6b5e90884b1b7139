"""Which queue a translator gets: iteration-level scheduling, static batches, or no batching."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.batcher import DynamicBatcher
from service.metrics import Metrics
from service.scheduler import ContinuousScheduler
from service.settings import Settings

if TYPE_CHECKING:
    from service.served import ServedTranslator, WorkQueue


def make_translation_queue(model: ServedTranslator, settings: Settings, metrics: Metrics) -> WorkQueue:
    if settings.scheduler == "continuous":
        return ContinuousScheduler(model.name, model.runtime, metrics, settings.max_active_rows,
                                   settings.max_active_source_tokens, settings.max_queue_size)
    batch = 1 if settings.scheduler == "none" else settings.max_batch_size
    return DynamicBatcher(model.name, model.run, metrics, batch, settings.max_queue_delay_ms / 1000,
                          settings.max_queue_size)
