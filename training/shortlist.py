"""Learning a translator's lexical shortlist, and the step graph that scores only its candidates.

The shortlist (see service/engine/shortlist.py for how decoding uses it) comes from IBM Model 1 translation
probabilities p(target token | source token), estimated by EM over the training pairs' subword ids, with a NULL
source token that absorbs the target tokens no source token explains (articles, function words). Model 1 rather than
raw co-occurrence: co-occurrence counts rank every source token's list by the target side's frequent tokens; EM's
explaining-away gives each source token the targets that it, rather than its neighbours, accounts for. This is the
lexical table Marian and Bergamot build their shortlists from (there from fast_align, a Model 2 variant; Model 1
is enough here and runs in seconds with numpy). Each source token keeps its `per_source` most likely targets with
p >= `min_prob`; every sentence also gets the `frequent` most frequent target tokens and EOS.

The shortlist step graph is the step graph with the output layer's columns gathered by the `candidates` input: the
weight, bias and any per-column scale or zero point of the projection that feeds the log-softmax (float MatMul or
int8 MatMulInteger alike), a `candidate_mask` (rows, candidates) that keeps each row to its own sentence's ids, and
`top_ids` mapped back through the candidates to the full vocabulary. Built by rewriting the exported (or quantized)
graph, so an int8 version gets an int8 shortlist graph, and weights kept in an external file stay shared.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from service.engine.repository import read_config, resolve_version_dir, write_json
from service.engine.shortlist import CANDIDATE_MASK_INPUT, CANDIDATES_INPUT, Shortlist
from service.engine.text import EOS_ID, TextEncoder
from service.errors import UserError
from training.repo_writer import VersionWriter

log = logging.getLogger("seqserve.shortlist")
SHORTLIST_FILE, SHORTLIST_GRAPH = "shortlist.npz", "decoder_shortlist.onnx"
PROJECTIONS = ("MatMul", "MatMulInteger")


def model1(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], src_vocab: int, tgt_vocab: int,
           iterations: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IBM Model 1 by EM: -> (source ids, target ids, p(target | source)) over the co-occurring pairs, the NULL
    source token as id `src_vocab`."""
    src_rows, tgt_rows, groups = [], [], []
    position = 0
    for src, tgt in pairs:
        if not tgt:
            continue
        s = np.append(np.asarray(src, dtype=np.int64), src_vocab)  # with NULL
        t = np.asarray(tgt, dtype=np.int64)
        src_rows.append(np.repeat(s, len(t)))
        tgt_rows.append(np.tile(t, len(s)))
        groups.append(position + np.tile(np.arange(len(t)), len(s)))  # each target position's alignment choices
        position += len(t)
    if not src_rows:
        raise UserError("no training pairs to learn a shortlist from")
    s_all, t_all, g_all = np.concatenate(src_rows), np.concatenate(tgt_rows), np.concatenate(groups)
    keys, inverse = np.unique(s_all * tgt_vocab + t_all, return_inverse=True)
    key_src = keys // tgt_vocab
    prob = np.full(len(keys), 1.0 / tgt_vocab)
    for _ in range(iterations):
        p = prob[inverse]
        posterior = p / np.bincount(g_all, p, minlength=position)[g_all]
        counts = np.bincount(inverse, posterior, minlength=len(keys))
        prob = counts / np.bincount(key_src, counts, minlength=src_vocab + 1)[key_src]
    return key_src, keys % tgt_vocab, prob


def learn_shortlist(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], src_vocab: int, tgt_vocab: int,
                    per_source: int = 20, frequent: int = 100, min_prob: float = 0.01, copy_source: bool = False,
                    iterations: int = 5) -> tuple[Shortlist, np.ndarray]:
    """The shortlist of token-id pairs (targets without BOS/EOS): -> (shortlist, the frequent target ids)."""
    src_ids, tgt_ids, prob = model1(pairs, src_vocab, tgt_vocab, iterations)
    keep = (src_ids < src_vocab) & (prob >= min_prob)
    src_ids, tgt_ids, prob = src_ids[keep], tgt_ids[keep], prob[keep]
    order = np.lexsort((tgt_ids, -prob, src_ids))  # by source, most likely first (ties by lower id)
    src_ids, tgt_ids = src_ids[order], tgt_ids[order]
    starts = np.searchsorted(src_ids, np.arange(src_vocab + 1))
    rank = np.arange(len(src_ids)) - starts[src_ids]
    kept = rank < per_source
    src_ids, tgt_ids = src_ids[kept], tgt_ids[kept]
    indptr = np.searchsorted(src_ids, np.arange(src_vocab + 1)).astype(np.int64)
    indices = np.concatenate([np.sort(tgt_ids[indptr[s]: indptr[s + 1]]) for s in range(src_vocab)]
                             ) if len(tgt_ids) else np.zeros(0, dtype=np.int64)
    counts = np.bincount(np.concatenate([np.asarray(t, dtype=np.int64) for _, t in pairs]), minlength=tgt_vocab)
    most = np.argsort(-counts, kind="stable")[:frequent]
    most = np.union1d(most[counts[most] > 0], [EOS_ID]).astype(np.int64)
    return Shortlist(indptr, indices.astype(np.int64), most, copy_source, tgt_vocab), most


def coverage(shortlist: Shortlist, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict[str, float]:
    """How much of the references the sentences' shortlists hold: the share of reference tokens, of sentences with
    every token held, and the mean shortlist size."""
    held = total = whole = 0
    sizes = []
    for src, tgt in pairs:
        ids = shortlist.for_sentence(src)
        inside = np.isin(np.asarray(tgt, dtype=np.int64), ids)
        held, total, whole = held + int(inside.sum()), total + len(tgt), whole + int(inside.all())
        sizes.append(len(ids))
    return {"token_coverage": held / max(total, 1), "sentence_coverage": whole / max(len(pairs), 1),
            "mean_size": float(np.mean(sizes)) if sizes else 0.0, "sentences": len(pairs)}


def add_shortlist_graph(decoder: Path, out: Path) -> None:
    """Write the shortlist step graph of the step graph `decoder` (see the module docstring) to `out`."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(decoder), load_external_data=False)  # external weights stay where they are, shared
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    initializers = {t.name: t for t in graph.initializer}
    softmax = next((n for n in graph.node if n.op_type == "LogSoftmax" and n.output[0] == "log_probs"), None)
    top_k = next((n for n in graph.node if n.op_type == "TopK" and n.input[0] == "log_probs"), None)
    if softmax is None or top_k is None:
        raise UserError(f"{decoder}: no LogSoftmax -> log_probs -> TopK to build a shortlist graph from")
    # the output projection: the nearest MatMul above the log-softmax whose weight is an initializer (hidden, vocab)
    chain, frontier, projection = set(), [softmax.input[0]], None
    while frontier:
        name = frontier.pop()
        node = producer.get(name)
        if node is None or id(node) in chain:
            continue
        chain.add(id(node))
        if node.op_type in PROJECTIONS and node.input[1] in initializers:
            projection = node
            frontier += list(node.input[2:])  # zero points; not the activations
            continue
        frontier += list(node.input)
    if projection is None:
        raise UserError(f"{decoder}: no MatMul with a weight initializer feeds the log-softmax")
    vocab = int(initializers[projection.input[1]].dims[-1])
    gathered: dict[str, str] = {}
    new_nodes = []
    for node in graph.node:
        if id(node) not in chain:
            continue
        for i, name in enumerate(node.input):
            tensor = initializers.get(name)
            if tensor is None or not tensor.dims or tensor.dims[-1] != vocab:
                continue
            if name not in gathered:
                gathered[name] = f"{name}.shortlisted"
                new_nodes += _gather_columns(name, len(tensor.dims), gathered[name])
            node.input[i] = gathered[name]
    graph.initializer.append(helper.make_tensor("shortlist.masked", TensorProto.FLOAT, [], [float("-inf")]))
    masked = "shortlist.logits"
    mask = helper.make_node("Where", [CANDIDATE_MASK_INPUT, softmax.input[0], "shortlist.masked"], [masked],
                            name="shortlist_mask")
    softmax.input[0] = masked
    index = top_k.output[1]
    top_k.output[1] = "shortlist.top_index"
    ids = helper.make_node("Gather", [CANDIDATES_INPUT, "shortlist.top_index"], [index], axis=0, name="shortlist_ids")
    nodes = list(new_nodes)  # the weight gathers read graph inputs and initializers only: first
    for node in graph.node:  # kept in topological order: the mask right before the log-softmax, ids after TopK
        nodes += [mask, node] if node is softmax else [node, ids] if node is top_k else [node]
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("value_info")  # widths there were the vocabulary's
    for output in graph.output:
        if output.name == "log_probs":
            output.CopyFrom(helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["B", "C"]))
    graph.input.extend([helper.make_tensor_value_info(CANDIDATES_INPUT, TensorProto.INT64, ["C"]),
                        helper.make_tensor_value_info(CANDIDATE_MASK_INPUT, TensorProto.BOOL, ["B", "C"])])
    onnx.save(model, str(out))
    onnx.checker.check_model(str(out))  # by path: external weights are found beside the graph


def _gather_columns(name: str, rank: int, out: str) -> list[Any]:
    """Nodes taking the candidates' columns (last axis) of an initializer. A matrix goes through its transpose, which
    onnxruntime folds into a constant when the session loads: gathering whole rows is a copy of contiguous memory,
    where gathering columns touches every row (about 40x slower for a 256 x 8000 int8 weight), and the transpose
    back of the (candidates, hidden) rows is cheap."""
    from onnx import helper

    if rank == 1:
        return [helper.make_node("Gather", [name, CANDIDATES_INPUT], [out], axis=0, name=f"{name}.shortlist_gather")]
    if rank != 2:
        return [helper.make_node("Gather", [name, CANDIDATES_INPUT], [out], axis=rank - 1,
                                 name=f"{name}.shortlist_gather")]
    return [helper.make_node("Transpose", [name], [f"{name}.by_token"], perm=[1, 0], name=f"{name}.by_token"),
            helper.make_node("Gather", [f"{name}.by_token", CANDIDATES_INPUT], [f"{name}.rows"], axis=0,
                             name=f"{name}.shortlist_gather"),
            helper.make_node("Transpose", [f"{name}.rows"], [out], perm=[1, 0], name=f"{name}.shortlist_columns")]


Encoded = list[tuple[list[int], list[int]]]


def encoded_pairs(version_dir: Path, config: dict[str, Any], pairs: Sequence[Any]) -> Encoded:
    """Text pairs as the model's token ids: sources as the service encodes them, targets without EOS."""
    scripts = config.get("scripts") or {}
    source, target = (TextEncoder.load(version_dir / config["tokenizers"][side], int(config["max_length"]),
                                       scripts.get(side)) for side in ("source", "target"))
    srcs = source.ids([p.src for p in pairs], add_eos=bool(config.get("source_eos", True)))
    return list(zip(srcs, target.ids([p.tgt for p in pairs]), strict=True))


def learning_pairs(version_dir: Path, config: dict[str, Any], data: str | None, target_data: str | None,
                   ) -> tuple[Encoded, Encoded]:
    """(training pairs, validation pairs) as token ids: the recorded data's train and valid splits (loaded once), or
    every pair of --data and no validation."""
    from training.translate import load_eval_pairs, recorded_splits

    if data is not None:
        pairs = load_eval_pairs(config, SimpleNamespace(data=data, target_data=target_data, split="train", pair=None))
        return encoded_pairs(version_dir, config, pairs), []
    splits = recorded_splits(config)
    return encoded_pairs(version_dir, config, splits["train"]), encoded_pairs(version_dir, config, splits["valid"])


def shortlist_version(model_dir: Path, data: str | None = None, target_data: str | None = None,
                      per_source: int = 20, frequent: int = 100, min_prob: float = 0.01) -> dict[str, Any]:
    """`seqserve shortlist`: learn the shortlist of a translator version from its training pairs, write it and its
    step graph into the version folder, and record both (with the validation coverage) in config.json."""
    if per_source < 0 or frequent < 0 or not 0 <= min_prob < 1:
        raise UserError(f"--per-source and --frequent must be at least 0 and --min-prob in [0, 1); got {per_source}, "
                        f"{frequent} and {min_prob}")
    version_dir = resolve_version_dir(model_dir)
    config = read_config(version_dir)
    if config.get("kind") != "translator":
        raise UserError(f"{version_dir} is a {config.get('kind')}; shortlists are for translators")
    pairs, valid = learning_pairs(version_dir, config, data, target_data)
    model = config["model"]
    shared = model.get("share_embeddings") or (config["tokenizers"]["source"] == config["tokenizers"]["target"])
    shortlist, most = learn_shortlist(pairs, int(model["src_vocab"]), int(model["tgt_vocab"]), per_source, frequent,
                                      min_prob, copy_source=bool(shared))
    shortlist.save(version_dir / SHORTLIST_FILE, most)
    add_shortlist_graph(version_dir / config["graphs"]["decoder"], version_dir / SHORTLIST_GRAPH)
    entry = {"file": SHORTLIST_FILE, "graph": SHORTLIST_GRAPH, "method": "ibm-model-1", "per_source": per_source,
             "frequent": frequent, "min_prob": min_prob, "copy_source": bool(shared), "pairs": len(pairs),
             "source": data or (config.get("provenance") or {}).get("source"),
             "created": datetime.now(UTC).isoformat(timespec="seconds")}
    if valid:
        entry["valid"] = {k: round(v, 4) for k, v in coverage(shortlist, valid).items()}
    config["shortlist"] = entry
    write_json(version_dir / "config.json", config)
    VersionWriter(version_dir).write_card()
    log.info("%s: shortlist of %d source tokens from %d pairs: %s", version_dir, len(shortlist.indptr) - 1,
             len(pairs), json.dumps(entry.get("valid", {})))
    return entry
