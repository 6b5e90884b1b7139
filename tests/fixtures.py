"""Shared fixtures: tiny models trained once per session, and real servers on loopback (uvicorn in a thread for
fault injection, or a `seqserve serve` process)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from bench.server import free_port, stop_process, wait_ready
from models.classifier import ClassifierConfig
from models.lm import LMConfig
from models.seq2seq import Seq2SeqConfig
from models.tagger import TaggerConfig
from service.app import create_app
from service.server import uvicorn_config
from service.settings import Settings
from tests.conftest import (
    synthetic_pairs,
    synthetic_reviews,
    synthetic_sentences,
    synthetic_tagged,
    write_csv,
    write_seq_folder,
    write_tsv,
)
from training.classify import ClassifierJob, LabelledData
from training.job import run_job
from training.lm import LMJob, TextData
from training.loop import TrainConfig
from training.tag import TaggedData, TaggerJob
from training.translate import ParallelData, TranslatorJob

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def classifier_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier trained in seconds, as a model version folder (reused by copying)."""
    root = tmp_path_factory.mktemp("classifier")
    data = write_csv(root / "reviews.csv", synthetic_reviews(600, seed=1))
    job = ClassifierJob(data=LabelledData(str(data)), out=root / "repo" / "reviews", work_dir=root / "run",
                        model=ClassifierConfig(vocab_size=300, emb_dim=16, hidden=16),
                        train=TrainConfig(epochs=4, batch_size=16, lr=0.01, seed=7))
    path = run_job(job)
    assert path is not None
    return path


@pytest.fixture(scope="session")
def translator_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny translator (number words en -> de) trained in seconds, as a model version folder."""
    root = tmp_path_factory.mktemp("translator")
    data = write_tsv(root / "pairs.tsv", synthetic_pairs(1500, seed=3))
    job = TranslatorJob(data=ParallelData(str(data), valid_fraction=0.05, test_fraction=0.05),
                        out=root / "repo" / "numbers", work_dir=root / "run",
                        model=Seq2SeqConfig(src_vocab=300, tgt_vocab=300, emb_dim=32, enc_hidden=32, dec_hidden=64,
                                            dropout=0.1),
                        train=TrainConfig(epochs=6, batch_size=32, lr=0.01, seed=5), valid_bleu_sentences=50)
    path = run_job(job)
    assert path is not None
    return path


@pytest.fixture(scope="session")
def shortlisted_version(tmp_path_factory: pytest.TempPathFactory, translator_version: Path) -> Path:
    """The tiny translator with a lexical shortlist (`seqserve shortlist`), kept small so that it cuts."""
    from training.shortlist import shortlist_version

    path = tmp_path_factory.mktemp("shortlisted") / "numbers" / "1"
    shutil.copytree(translator_version, path)
    shortlist_version(path, per_source=5, frequent=10, min_prob=0.01)
    return path


@pytest.fixture(scope="session")
def tagger_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy slot-filling data set with intents, in the ATIS/SNIPS folder format."""
    return write_seq_folder(tmp_path_factory.mktemp("tagged") / "flights",
                            {"train": synthetic_tagged(400, seed=11), "dev": synthetic_tagged(40, seed=12),
                             "test": synthetic_tagged(40, seed=13)})


@pytest.fixture(scope="session")
def tagger_version(tmp_path_factory: pytest.TempPathFactory, tagger_data: Path) -> Path:
    """A tiny joint tagger (slots with a CRF, and intents) trained in seconds, as a model version folder."""
    root = tmp_path_factory.mktemp("tagger")
    job = TaggerJob(data=TaggedData(str(tagger_data)), out=root / "repo" / "flights", work_dir=root / "run",
                    model=TaggerConfig(vocab_size=300, emb_dim=16, hidden=16),
                    train=TrainConfig(epochs=6, batch_size=16, lr=0.01, seed=3))
    path = run_job(job)
    assert path is not None
    return path


@pytest.fixture(scope="session")
def lm_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lm") / "animals.txt"
    path.write_text("\n".join(synthetic_sentences(1500, seed=21)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def lm_version(tmp_path_factory: pytest.TempPathFactory, lm_data: Path) -> Path:
    """A tiny language model (LSTM, two layers) trained in seconds, as a model version folder."""
    root = tmp_path_factory.mktemp("lm")
    job = LMJob(data=TextData(str(lm_data)), out=root / "repo" / "animals", work_dir=root / "run",
                model=LMConfig(vocab_size=300, emb_dim=24, hidden=48, layers=2, dropout=0.1), max_length=32,
                train=TrainConfig(epochs=6, batch_size=32, lr=0.01, seed=4))
    path = run_job(job)
    assert path is not None
    return path


@pytest.fixture
def repo(tmp_path: Path, classifier_version: Path, translator_version: Path, tagger_version: Path,
         lm_version: Path) -> Path:
    """A fresh model repository per test: reviews/1 (a classifier), numbers/1 (a translator), flights/1 (a
    tagger) and animals/1 (a language model)."""
    root = tmp_path / "model_repository"
    shutil.copytree(classifier_version, root / "reviews" / "1")
    shutil.copytree(translator_version, root / "numbers" / "1")
    shutil.copytree(tagger_version, root / "flights" / "1")
    shutil.copytree(lm_version, root / "animals" / "1")
    return root


class ThreadServer:
    def __init__(self, settings: Settings, fast_routes: bool = True, provider: object = None) -> None:
        self.app = create_app(settings, fast_routes=fast_routes, provider=provider)
        self.url = f"http://127.0.0.1:{settings.port}"
        config = uvicorn_config(self.app, settings.model_copy(update={"host": "127.0.0.1", "drain_timeout_s": 10}))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def manager(self):  # type: ignore[no-untyped-def]
        return self.app.state.manager

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_ready(self.url, timeout=90)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def make_server(repo: Path) -> Iterator[object]:
    """Start an in-process server with settings overrides; stopped at teardown."""
    started: list[ThreadServer] = []

    def start(**overrides: object) -> ThreadServer:
        settings = Settings(model_repository=overrides.pop("model_repository", repo), port=free_port(),
                            **overrides)  # type: ignore[arg-type]
        server = ThreadServer(settings).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__()


class ProcessServer:
    """`seqserve serve` as a child process; always stopped by its PID."""

    def __init__(self, repo: Path, log_path: Path, open_files: tuple[int, int] | None = None, **env: str) -> None:
        """open_files: the server's (soft, hard) limits on open files, as `ulimit -Sn`/`-Hn` would set them."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, **{f"SEQSERVE_{k.upper()}": v for k, v in env.items()}}
        self.log = log_path.open("wb")

        def limit_files() -> None:
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, open_files)

        self.proc = subprocess.Popen([str(BIN / "seqserve"), "serve", "--model-repository", str(repo),
                                      "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=full_env, preexec_fn=limit_files)
        wait_ready(self.url, timeout=90, proc=self.proc)

    def stop(self) -> int:
        code = stop_process(self.proc)
        self.log.close()
        return code
