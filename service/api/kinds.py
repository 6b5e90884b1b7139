"""The API layer's registry of model kinds: the served model's `kind` -> its API module's `ApiKind`.

Adding a kind: an API module beside this one (routes, bodies, `v2_options`, a `KIND`) and one line in `API_KINDS`."""

from __future__ import annotations

from service.api import classify, lm, tag, translate
from service.api.kind import ApiKind

API_KINDS: dict[str, ApiKind] = {
    "classifier": classify.KIND,
    "translator": translate.KIND,
    "tagger": tag.KIND,
    "lm": lm.KIND,
}
V1_PATHS: dict[str, str] = {path: kind.kind for kind in API_KINDS.values() for path in kind.v1_paths}
