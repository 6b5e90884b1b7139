"""Wrap the peer benchmark's classifier (`../shared/tools/peers`) as a seqserve model version, so that seqserve
serves exactly the ONNX graph LitServe, BentoML and the others serve, on exactly the same token ids.

The peers tokenize by "lowercase, split on whitespace, crc32 each word into 1..7999, keep 128". That mapping is
many-to-one (words share crc32 ids), which a `tokenizers` WordLevel vocabulary cannot keep through its JSON file
(one token per id). So the tokenizer gives each word of the benchmark's word list its own id, and the served
graph starts with a Gather that maps those ids to the peers' crc32 ids before the peers' unchanged graph.

    .venv/bin/python loadtest/peers_model.py --peers ../shared/tools/peers --onnx /tmp/peers/clf.onnx \
        --out /tmp/peers-repo/clf
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.engine.classifier import ClassifierRuntime  # noqa: E402
from service.engine.text import SPECIAL_TOKENS, UNK  # noqa: E402


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def word_tokenizer(words: list[str]) -> tuple[Tokenizer, list[str]]:
    """Lowercase + whitespace split; ids 0..3 are seqserve's specials, then one id per word (sorted)."""
    vocab = [*SPECIAL_TOKENS, *sorted(set(words))]
    tokenizer = Tokenizer(WordLevel({token: i for i, token in enumerate(vocab)}, unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer, vocab


def with_id_map(graph: onnx.ModelProto, vocab: list[str], peer_vocab: int, input_name: str = "ids") -> None:
    """Prepend `ids = Gather(table, ids)`: our id -> the peers' crc32 id (specials keep 0..3; pad stays 0)."""
    table = [i if i < len(SPECIAL_TOKENS) else 1 + zlib.crc32(w.encode("utf-8")) % (peer_vocab - 1)
             for i, w in enumerate(vocab)]
    mapped = f"{input_name}_peer"
    for node in graph.graph.node:
        node.input[:] = [mapped if name == input_name else name for name in node.input]
    graph.graph.initializer.append(numpy_helper.from_array(np.array(table, dtype=np.int64), "peer_id_table"))
    graph.graph.node.insert(0, helper.make_node("Gather", ["peer_id_table", input_name], [mapped], axis=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=Path, required=True, help="peer benchmark folder (common.py, gen_bodies.py)")
    parser.add_argument("--onnx", type=Path, required=True, help="its exported classifier (clf.onnx)")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write version 1 into")
    a = parser.parse_args()
    common, bodies = load_module(a.peers / "common.py"), load_module(a.peers / "gen_bodies.py")
    version = a.out / "1"
    version.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab = word_tokenizer(list(bodies.WORDS))
    tokenizer.save(str(version / "tokenizer.json"))
    graph = onnx.load(str(a.onnx))
    with_id_map(graph, vocab, common.VOCAB)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(version / "model.onnx"))
    config = {
        "name": a.out.name, "version": 1, "kind": "classifier", "labels": list(common.LABELS),
        "max_length": common.MAX_TOKENS, "graphs": {"model": "model.onnx"}, "tokenizers": {"source": "tokenizer.json"},
        "provenance": {"source": f"{a.peers}/export_model.py", "note": "the peer benchmark's model and ids"},
    }
    (version / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    # The check that matters: the version as seqserve loads it gives the peers' probabilities on every text.
    runtime, session, texts = ClassifierRuntime(version, config), common.make_session(str(a.onnx)), bodies.make_texts()
    ours = runtime.predict(texts)
    ids, lengths = common.encode_batch(texts)
    theirs = common.softmax(session.run(["logits"], {"ids": ids, "lengths": lengths})[0].astype(np.float64))
    if not np.allclose(ours, theirs, atol=1e-5):
        raise SystemExit(f"probabilities differ from the peers' by up to {np.abs(ours - theirs).max():.2e}")
    print(f"wrote {version}; same probabilities as the peers' engine on all {len(texts)} benchmark texts")  # noqa: T201


if __name__ == "__main__":
    main()
