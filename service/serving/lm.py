"""A language model as served: every task (score, complete, generate) on the iteration-level scheduler
(`DecodingModel`), or whole batches on the dynamic batcher (the `scheduler` setting, as for translators)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.batching.lm import LMEngine
from service.engine.lm import Completion, LMItem, LMRuntime, SampleOptions, Scored
from service.engine.sessions import SessionOptions
from service.metrics import Metrics
from service.serving.served import WARMUP_TEXTS, DecodingModel, Output
from service.settings import Settings

SCORE_OUTPUTS = ("log_prob", "perplexity", "tokens", "token_log_probs")
COMPLETE_OUTPUTS = ("words", "word_probabilities")


@dataclass(frozen=True)
class LMOptions:
    """What a request asks of a language model: `task` is score, complete (the `k` most likely next words) or
    generate (with `sample`)."""

    task: str
    k: int = 5
    sample: SampleOptions | None = None


class ServedLM(DecodingModel):
    kind = "lm"
    runtime: LMRuntime

    def __init__(self, name: str, version_dir: Path, config: dict[str, Any], opts: SessionOptions) -> None:
        super().__init__(name, version_dir, config, opts)
        self.runtime = LMRuntime(version_dir, config, opts)

    def cacheable(self, options: LMOptions) -> bool:
        """Sampling without a seed draws a fresh answer each time; everything else is a function of the text."""
        sample = options.sample
        return not (options.task == "generate" and sample is not None and sample.seed is None
                    and sample.temperature > 0)

    def engine(self, settings: Settings, metrics: Metrics) -> LMEngine:
        return LMEngine(self.runtime, metrics, self.name)

    def prepare(self, texts: Sequence[str], options: LMOptions) -> tuple[list[Any], list[int]]:
        """Tokenized here: admission budgets prompt tokens."""
        task_options = options.k if options.task == "complete" else options.sample
        items = [self.runtime.item(t, options.task, task_options) for t in texts]
        self.count_input_tokens([i.ids[1:] for i in items])
        return items, [len(i.ids) for i in items]

    def run(self, items: list[LMItem]) -> list[Any]:
        """Static batching: the whole batch runs together until its last search is done."""
        return self.runtime.run(items)

    def warm_up(self) -> None:
        self.runtime.run([self.runtime.item(t, "score") for t in WARMUP_TEXTS])
        self.runtime.run([self.runtime.item("warm up", "complete", 3),
                          self.runtime.item("warm", "generate", SampleOptions(max_tokens=4, seed=0))])

    def v2_outputs(self) -> list[Output]:
        return [Output("log_prob", "FP32", [-1]), Output("perplexity", "FP32", [-1]),
                Output("tokens", "BYTES", [-1, -1]), Output("token_log_probs", "FP32", [-1, -1]),
                Output("words", "BYTES", [-1, -1]), Output("word_probabilities", "FP32", [-1, -1])]

    def v2_output_names(self, options: LMOptions) -> list[str]:
        return list(COMPLETE_OUTPUTS if options.task == "complete" else SCORE_OUTPUTS)

    def v2_tensors(self, results: Sequence[Any]) -> dict[str, tuple[list[Any], list[int]]]:
        """Scores: each text's total log-prob and perplexity, and its tokens with their log-probs (padded with "" and
        0 to the longest); completions: each text's k words, most likely first, and their probabilities."""
        n = len(results)
        if results and isinstance(results[0], Completion):
            width = max(len(r.words) for r in results)
            words = [w for r in results for w, _ in r.words + [("", 0.0)] * (width - len(r.words))]
            probs = [p for r in results for _, p in r.words + [("", 0.0)] * (width - len(r.words))]
            return {"words": (words, [n, width]), "word_probabilities": (probs, [n, width])}
        scored: list[Scored] = list(results)
        width = max((len(r.tokens) for r in scored), default=0)
        return {
            "log_prob": ([r.log_prob for r in scored], [n]),
            "perplexity": ([r.perplexity for r in scored], [n]),
            "tokens": ([t for r in scored for t in r.tokens + [""] * (width - len(r.tokens))], [n, width]),
            "token_log_probs": ([x for r in scored for x in r.log_probs + [0.0] * (width - len(r.log_probs))],
                                [n, width]),
        }


