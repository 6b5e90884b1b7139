"""The model repository: `<root>/<name>/<version>/` with ONNX graph(s), tokenizer(s), config.json, metrics.json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from service.engine.kinds import KINDS
from service.errors import UserError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RepositoryError(UserError):
    """The repository or a model folder is missing or malformed."""


def valid_name(name: str) -> bool:
    """Model names are plain folder names: no separators, no leading dot, no traversal."""
    return bool(NAME_RE.match(name)) and ".." not in name


def versions(model_dir: Path) -> list[int]:
    """The numeric version folders of one model, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: Path) -> int:
    found = versions(model_dir)
    return found[-1] + 1 if found else 1


def model_names(root: Path) -> list[str]:
    if not root.is_dir():
        raise RepositoryError(f"{root}: model repository not found")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and valid_name(p.name) and versions(p))


def read_config(version_dir: Path) -> dict[str, Any]:
    """config.json of one model version, checked for the fields every consumer needs."""
    path = version_dir / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RepositoryError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("kind") not in KINDS:
        raise RepositoryError(f"{path}: 'kind' must be one of {KINDS}")
    for key in ("graphs", "tokenizers", "max_length"):
        if key not in config:
            raise RepositoryError(f"{path}: missing {key!r}")
    return config


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def resolve_version_dir(path: Path) -> Path:
    """A version folder as given, or the latest version of a model folder."""
    if (path / "config.json").is_file():
        return path
    found = versions(path)
    if not found:
        raise RepositoryError(f"{path}: neither a model version folder (with config.json) nor a model folder "
                              "with numbered versions")
    return path / str(found[-1])
