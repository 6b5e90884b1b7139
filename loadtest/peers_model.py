"""Wrap the peer benchmark's classifier (`../shared/tools/peers`) as a seqserve model version, so that seqserve
serves exactly the ONNX graph LitServe, BentoML and the others serve, on exactly the same token ids.

The peers tokenize by "lowercase, split on whitespace, crc32 each word into 1..7999, keep 128". A `tokenizers`
WordLevel tokenizer (Lowercase normalizer, WhitespaceSplit) whose vocabulary maps every word of the benchmark's
word list to its crc32 id gives the same ids for every benchmark text; words outside the list map to <unk>.

    .venv/bin/python loadtest/peers_model.py --peers ../shared/tools/peers --onnx /tmp/peers/clf.onnx \
        --out /tmp/peers-repo/clf
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import zlib
from pathlib import Path
from types import ModuleType

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.text import SPECIAL_TOKENS, UNK  # noqa: E402


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peer_tokenizer(words: list[str], vocab: int) -> Tokenizer:
    """Word -> 1 + crc32(word) % (vocab - 1), as the peers' common.tokenize; ids 0..3 keep seqserve's specials."""
    table = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted(set(words)):
        table.setdefault(word, 1 + zlib.crc32(word.encode("utf-8")) % (vocab - 1))
    tokenizer = Tokenizer(WordLevel(table, unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=Path, required=True, help="peer benchmark folder (common.py, gen_bodies.py)")
    parser.add_argument("--onnx", type=Path, required=True, help="its exported classifier (clf.onnx)")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write version 1 into")
    a = parser.parse_args()
    common, bodies = load_module(a.peers / "common.py"), load_module(a.peers / "gen_bodies.py")
    version = a.out / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(a.onnx, version / "model.onnx")
    tokenizer = peer_tokenizer(list(bodies.WORDS), common.VOCAB)
    tokenizer.save(str(version / "tokenizer.json"))
    texts = bodies.make_texts()
    for text in texts:  # the ids the peers compute, for every benchmark text
        expected = common.tokenize(text)
        got = tokenizer.encode(text, add_special_tokens=False).ids[: common.MAX_TOKENS]
        if got != expected:
            raise SystemExit(f"token ids differ from the peers' for {text!r}")
    config = {
        "name": a.out.name, "version": 1, "kind": "classifier", "labels": list(common.LABELS),
        "max_length": common.MAX_TOKENS, "graphs": {"model": "model.onnx"}, "tokenizers": {"source": "tokenizer.json"},
        "provenance": {"source": f"{a.peers}/export_model.py", "note": "the peer benchmark's model and ids"},
    }
    (version / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {version}; ids match the peers' on all {len(texts)} benchmark texts")  # noqa: T201


if __name__ == "__main__":
    main()
