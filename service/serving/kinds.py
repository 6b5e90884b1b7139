"""The serving layer's registry of model kinds: `config.json`'s `kind` -> its served model class.

Adding a kind: a `ServedModel` subclass beside this one and one line in `SERVED`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.engine.sessions import SessionOptions
from service.engine.shortlist import describe as shortlist_entry
from service.serving.classifier import ServedClassifier
from service.serving.lm import ServedLM
from service.serving.served import ServedModel
from service.serving.tagger import ServedTagger
from service.serving.translator import ServedTranslator
from service.settings import Settings

SERVED: dict[str, type[ServedModel]] = {
    "classifier": ServedClassifier,
    "translator": ServedTranslator,
    "tagger": ServedTagger,
    "lm": ServedLM,
}


def build_model(name: str, version_dir: Path, config: dict[str, Any], settings: Settings) -> ServedModel:
    """Create sessions and warm up (blocking: call it off the event loop)."""
    entry = shortlist_entry(config)
    needed = [*config["graphs"].values(), *config["tokenizers"].values(), *(config.get("files") or {}).values(),
              *([entry["file"], entry["graph"]] if entry else [])]
    missing = sorted({name for name in needed if not (version_dir / name).is_file()})
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}")
    opts = SessionOptions(settings.device, settings.intra_op_threads, settings.graph_optimization,
                          settings.intra_op_spinning)
    model = SERVED[config["kind"]](name, version_dir, config, opts)
    model.warm_up()
    return model
