"""A language model's side of iteration-level batching: the `IterationEngine` that `batching.scheduler` drives.

Admission runs the admitted prefixes through the prompt graph together and starts each request's search
(`engine/lm.py`: scoring, word completion or sampling); each iteration is one step-graph call over every live row.
A request that needs no step (a score, a one-token generation) finishes at its admission.
"""

from __future__ import annotations

import time
from typing import Any

from service.batching.scheduler import SeqRequest
from service.engine.lm import LMBatch, LMItem, LMRuntime
from service.metrics import Metrics


class LMEngine:
    def __init__(self, runtime: LMRuntime, metrics: Metrics, name: str) -> None:
        self.runtime, self.metrics, self.name = runtime, metrics, name
        self.batch = LMBatch(runtime.runner)
        self.active: list[SeqRequest] = []

    @property
    def rows(self) -> int:
        """Rows reserved: each active request's most (a completion's beam may widen)."""
        return sum(r.rows for r in self.active)

    @property
    def tokens(self) -> int:
        return sum(len(r.item.ids) for r in self.active)

    def cost(self, item: LMItem) -> tuple[int, int]:
        return self.runtime.rows_for(item), len(item.ids)

    def admit(self, admitted: list[SeqRequest]) -> None:
        if not admitted:
            return
        for r in admitted:
            r.search = self.runtime.search(r.item)
            r.rows = r.search.max_rows
        self.batch.admit([r.item.ids for r in admitted], [r.search for r in admitted])
        self.active.extend(admitted)

    def step(self) -> list[SeqRequest]:
        """One step call for every live row; -> the requests that are done (those done at admission too)."""
        if self.batch.rows:
            rows = self.batch.rows
            self.metrics.batch_size.labels(self.name).observe(rows)
            start = time.perf_counter()
            self.batch.step()
            self.metrics.decode_step.labels(self.name).observe(time.perf_counter() - start)
            self.metrics.generated_tokens.labels(self.name).inc(rows)
        return [r for r in self.active if r.search.done]

    def drop(self, leaving: list[SeqRequest]) -> None:
        if not leaving:
            return
        gone = {id(r) for r in leaving}
        self.batch.drop([r.search for r in leaving])
        self.active = [r for r in self.active if id(r) not in gone]

    def finish(self, r: SeqRequest) -> Any:
        result = r.search.result()
        if r.item.task == "generate":
            self.metrics.tokens_per_request.labels(self.name).observe(len(result.token_ids))
        return result

    def certain(self, r: SeqRequest) -> list[int]:
        return list(r.search.certain())

    def fresh(self) -> LMEngine:
        return LMEngine(self.runtime, self.metrics, self.name)
