"""The engine's registry of model kinds: `config.json`'s `kind` -> the runtime that runs its graphs.

Adding a kind: a runtime module beside this one (the `Runtime` protocol) and one line in `RUNTIMES`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from service.engine.classifier import ClassifierRuntime
from service.engine.lm import LMRuntime
from service.engine.sessions import SessionOptions
from service.engine.tagger import TaggerRuntime
from service.engine.translator import TranslatorRuntime


class Runtime(Protocol):
    """A model version's graphs and tokenizers, loaded: torch-free, used by evaluation and by the service."""

    def __init__(self, version_dir: Path, config: dict[str, Any], opts: SessionOptions | None = None) -> None: ...

    @property
    def provider(self) -> str:
        """The execution provider the sessions run on."""
        ...

    def smoke_test(self) -> None:
        """One real inference on made-up text; raises when the graphs do not run."""
        ...


RUNTIMES: dict[str, type[Runtime]] = {
    "classifier": ClassifierRuntime,
    "translator": TranslatorRuntime,
    "tagger": TaggerRuntime,
    "lm": LMRuntime,
}
KINDS = tuple(RUNTIMES)
log = logging.getLogger("seqserve.engine")


def load_runtime(version_dir: Path, config: dict[str, Any], opts: SessionOptions | None = None) -> Runtime:
    method = str((config.get("quantization") or {}).get("method", ""))
    if method.startswith("dynamic"):  # int8 versions written before seqserve quantize calibrated its scales
        log.warning("%s: %s computes activation scales over each batch, so a text's answer can change with the "
                    "other texts batched with it; run `seqserve quantize` on its fp32 version again",
                    version_dir, method)
    return RUNTIMES[config["kind"]](version_dir, config, opts)
