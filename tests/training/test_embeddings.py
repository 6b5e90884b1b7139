import gzip
import json

import numpy as np
import pytest

from service.engine.repository import read_config
from tests.conftest import BAD, FILLER, GOOD
from tests.training.test_train_cli import TINY, seqserve
from training.data import DataError
from training.embeddings import piece_texts, pretrained_embeddings
from training.tokenizer import train_tokenizer


def write_vectors(path, words, dim=8, header=False):
    rng = np.random.default_rng(0)
    vectors = {w: rng.normal(size=dim).round(4) for w in words}
    lines = ([f"{len(words)} {dim}"] if header else []) + [f"{w} {' '.join(map(str, v))}" for w, v in vectors.items()]
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return vectors


def test_vocabulary_pieces_get_the_vectors_of_their_words(tmp_path):
    tokenizer = train_tokenizer([" ".join(GOOD + BAD + FILLER)] * 50, vocab_size=400, lowercase=True)
    vectors = write_vectors(tmp_path / "vec.txt.gz", ["Great", "dull", "film", "unused"], header=True)
    found = pretrained_embeddings(str(tmp_path / "vec.txt.gz"), tokenizer, seed=0)
    texts = piece_texts(tokenizer)
    assert found.matrix.shape == (tokenizer.get_vocab_size(), 8) and not found.matrix[0].any()
    for word in ("great", "dull", "film"):
        np.testing.assert_allclose(found.matrix[texts.index(word)], vectors[word if word != "great" else "Great"],
                                   rtol=1e-5)
    assert 0 < found.coverage < 1


def test_missing_vectors_are_a_user_error(tmp_path):
    tokenizer = train_tokenizer(["a b c"] * 10, vocab_size=300)
    with pytest.raises(DataError, match="no such vectors file"):
        pretrained_embeddings(str(tmp_path / "nope.txt"), tokenizer, seed=0)


def test_train_with_pretrained_embeddings_and_adversarial_training(tmp_path, reviews_csv):
    write_vectors(tmp_path / "vec.txt.gz", GOOD + BAD + FILLER, dim=12)
    seqserve("train", "classifier", "--data", reviews_csv, "--out", tmp_path / "m", "--work-dir", tmp_path / "run",
             "--embeddings", tmp_path / "vec.txt.gz", "--adversarial", "1.0", *TINY)
    config = read_config(tmp_path / "m" / "1")
    assert config["model"]["emb_dim"] == 12 and config["training"]["adversarial"] == 1.0
    assert json.loads((tmp_path / "m" / "1" / "metrics.json").read_text())["test"]["accuracy"] >= 0.9
