"""The training layer's registry of model kinds: `kind` -> its export and evaluation tools.

Adding a kind: a module beside this one with its job (`training.kind.Job`) and its `TOOLS`, and one line here."""

from __future__ import annotations

from training import classify, lm, tag, translate
from training.kind import KindTools

TOOLS: dict[str, KindTools] = {
    "classifier": classify.TOOLS,
    "translator": translate.TOOLS,
    "tagger": tag.TOOLS,
    "lm": lm.TOOLS,
}
