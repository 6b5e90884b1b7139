import gzip
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from training import tag_data
from training.data import DataError
from training.tag_data import (
    ATIS_ENV,
    Sentence,
    atis,
    check_sentences,
    read_conll,
    read_seq_folder,
    read_tag_jsonl,
    read_tagged,
)

ATIS_DIR = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "atis"


def write_split(folder: Path, prefix: str, words: str, tags: str, labels: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}.seq.in").write_text(words, encoding="utf-8")
    (folder / f"{prefix}.seq.out").write_text(tags, encoding="utf-8")
    if labels is not None:
        (folder / f"{prefix}.label").write_text(labels, encoding="utf-8")


def write_jsonl(path: Path, *rows: object) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")
    return path


def raises_one_line(message: str, call, *args):
    with pytest.raises(DataError, match=message) as info:
        call(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


# ---- ATIS/SNIPS folders ------------------------------------------------------------------------------------------


def test_seq_folder_flat_layout_with_intents(tmp_path):
    write_split(tmp_path, "train", "fly to boston\nshow fares\n", "O O B-city\nO O\n", "atis_flight\natis_airfare\n")
    write_split(tmp_path, "dev", "to new york\n", "O B-city I-city\n", "atis_flight\n")
    (tmp_path / "intent_label.txt").write_text("atis_flight\n", encoding="utf-8")  # JointBERT's vocabularies: ignored
    splits = read_seq_folder(tmp_path)
    assert list(splits) == ["train", "valid"]
    assert splits["train"] == [Sentence(("fly", "to", "boston"), ("O", "O", "B-city"), "atis_flight"),
                               Sentence(("show", "fares"), ("O", "O"), "atis_airfare")]
    assert splits["valid"][0].tags == ("O", "B-city", "I-city")


def test_seq_folder_without_labels_valid_name_and_crlf(tmp_path):
    write_split(tmp_path, "train", "a b\r\nc", "O B-x\r\nO\r\n")
    write_split(tmp_path, "valid", "d\n", "B-y\n")
    write_split(tmp_path, "test", "e f\n", "O O\n")
    splits = read_seq_folder(tmp_path)
    assert list(splits) == ["train", "valid", "test"]
    assert splits["train"] == [Sentence(("a", "b"), ("O", "B-x")), Sentence(("c",), ("O",))]


def test_jointbert_subfolder_layout(tmp_path):
    for split, n in (("train", 2), ("dev", 1), ("test", 1)):
        sub = tmp_path / split
        sub.mkdir()
        (sub / "seq.in").write_text("play some jazz\n" * n, encoding="utf-8")
        (sub / "seq.out").write_text("O O B-genre\n" * n, encoding="utf-8")
        (sub / "label").write_text("PlayMusic\n" * n, encoding="utf-8")
    (tmp_path / "notes").mkdir()  # a sub-folder without seq.in is not a split
    splits = read_tagged(tmp_path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "valid": 1, "test": 1}
    assert splits["test"][0] == Sentence(("play", "some", "jazz"), ("O", "O", "B-genre"), "PlayMusic")


def test_seq_folder_errors(tmp_path):
    write_split(tmp_path / "a", "train", "a b c d e\n", "O O O O\n")
    raises_one_line(r"a/train\.seq\.out:1: 5 words but 4 tags", read_seq_folder, tmp_path / "a")

    write_split(tmp_path / "b", "train", "a\n\nb\n", "O\n\nO\n")
    raises_one_line(r"b/train\.seq\.in:2: empty sentence", read_seq_folder, tmp_path / "b")
    write_split(tmp_path / "b2", "train", "a\n\n", "O\n\n")  # a blank line at the end is a sentence too
    raises_one_line(r"b2/train\.seq\.in:2: empty sentence", read_seq_folder, tmp_path / "b2")

    write_split(tmp_path / "c", "train", "a\nb\n", "O\n")
    msg = raises_one_line("has 2 lines but", read_seq_folder, tmp_path / "c")
    assert "train.seq.in" in msg and "train.seq.out has 1" in msg

    write_split(tmp_path / "d", "train", "a\n", "O\n")
    (tmp_path / "d" / "extra.seq.in").write_text("a\n", encoding="utf-8")
    raises_one_line(r"extra\.seq\.in: unknown split 'extra'; expected train, dev/valid, test", read_seq_folder,
                    tmp_path / "d")

    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "train.seq.in").write_text("a\n", encoding="utf-8")
    raises_one_line(r"e/train\.seq\.in: no train\.seq\.out", read_seq_folder, tmp_path / "e")

    write_split(tmp_path / "f", "train", "a\nb\n", "O\nO\n", "x\n")
    raises_one_line(r"train\.seq\.in has 2 lines but .*train\.label has 1", read_seq_folder, tmp_path / "f")

    write_split(tmp_path / "g", "train", "a\nb\n", "O\nO\n", "x\n \n")
    raises_one_line(r"g/train\.label:2: empty label", read_seq_folder, tmp_path / "g")

    write_split(tmp_path / "h", "train", "a\n", "O\n")
    write_split(tmp_path / "h", "dev", "a\n", "O\n")
    write_split(tmp_path / "h", "valid", "a\n", "O\n")
    raises_one_line(r"dev\.seq\.in and .*valid\.seq\.in are both the valid split", read_seq_folder, tmp_path / "h")

    write_split(tmp_path / "i", "test", "a\n", "O\n")
    raises_one_line(r"i: no train\.seq\.in", read_seq_folder, tmp_path / "i")

    write_split(tmp_path / "j", "train", "a\n", "O\n", "x\n")
    write_split(tmp_path / "j", "test", "a\n", "O\n")
    raises_one_line(r"train\.label gives intents but .*test\.label does not exist", read_seq_folder, tmp_path / "j")

    write_split(tmp_path / "k", "train", "", "")
    raises_one_line(r"k/train\.seq\.out: no sentences", read_seq_folder, tmp_path / "k")

    raises_one_line("no such folder", read_seq_folder, tmp_path / "missing")


# ---- CoNLL -------------------------------------------------------------------------------------------------------


CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- -X- O

London\tNNP\tB-NP\tB-LOC
"""


def test_conll_skips_docstart_and_blank_runs(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL, encoding="utf-8")
    sentences = read_tagged(path)
    assert sentences == [Sentence(("EU", "rejects", "German"), ("B-ORG", "O", "B-MISC")),
                         Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER")),
                         Sentence(("London",), ("B-LOC",))]
    assert read_conll(path, tag_column=2)[1].tags == ("B-NP", "I-NP")


def test_conll_gzip_and_errors(tmp_path):
    gz = tmp_path / "a.txt.gz"
    gz.write_bytes(gzip.compress(b"a O\nb B-x\n"))
    assert read_conll(gz) == [Sentence(("a", "b"), ("O", "B-x"))]

    bad = tmp_path / "bad.txt"
    bad.write_text("a O\nlonely\n", encoding="utf-8")
    raises_one_line(r"bad\.txt:2: expected at least 2 columns", read_conll, bad)
    bad.write_text("a X O\nb Y\n", encoding="utf-8")
    raises_one_line(r"bad\.txt:2: expected at least 3 columns", read_conll, bad, 2)
    raises_one_line(r"bad\.txt: the tag column cannot be 0", read_conll, bad, 0)
    bad.write_text("-DOCSTART- O\n\n\n", encoding="utf-8")
    raises_one_line(r"bad\.txt: no sentences", read_conll, bad)


# ---- JSONL -------------------------------------------------------------------------------------------------------


def test_jsonl_spans_to_bio_with_cjk_emoji_and_cut_words(tmp_path):
    text_zh = "明天去東京🙂"
    rows = [
        {"text": "fly to New York tomorrow", "spans": [{"start": 7, "end": 15, "label": "city"}], "intent": "flight"},
        {"text": "NYC's best pizza", "spans": [{"start": 0, "end": 3, "label": "city"}], "intent": "food"},
        {"text": text_zh, "spans": [{"start": 3, "end": 5, "label": "city"}, {"start": 0, "end": 2, "label": "date"}],
         "intent": "travel"},
        {"text": "🙂 hi Zoë!", "spans": [{"start": 5, "end": 8, "label": "name"}], "intent": "greet"},
        "",
        {"text": "nothing here", "spans": [], "intent": "none"},
    ]
    sentences = read_tagged(write_jsonl(tmp_path / "a.jsonl", *rows))
    assert sentences[0] == Sentence(("fly", "to", "New", "York", "tomorrow"), ("O", "O", "B-city", "I-city", "O"),
                                    "flight")
    assert sentences[1].words == ("NYC", "'s", "best", "pizza") and sentences[1].tags == ("B-city", "O", "O", "O")
    assert sentences[2].words == ("明", "天", "去", "東", "京", "🙂")
    assert sentences[2].tags == ("B-date", "I-date", "O", "B-city", "I-city", "O")
    assert sentences[3].words == ("🙂", "hi", "Zoë", "!") and sentences[3].tags == ("O", "O", "B-name", "O")
    assert sentences[4] == Sentence(("nothing", "here"), ("O", "O"), "none")


def test_jsonl_span_boundary_inside_a_word_and_gzip_without_intents(tmp_path):
    path = tmp_path / "b.jsonl.gz"
    row = {"text": "flights from JFKtoLAX", "spans": [{"start": 13, "end": 16, "label": "from"},
                                                     {"start": 18, "end": 21, "label": "to"}]}
    path.write_bytes(gzip.compress((json.dumps(row) + "\n").encode()))
    [sentence] = read_tagged(path)
    assert sentence == Sentence(("flights", "from", "JFK", "to", "LAX"), ("O", "O", "B-from", "O", "B-to"))


def span(start, end, label="x"):
    return {"start": start, "end": end, "label": label}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{oops", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"spans": []}, "no field 'text'"),
        ({"text": 3, "spans": []}, "field 'text' is a number"),
        ({"text": "  ", "spans": []}, "empty sentence"),
        ({"text": "a b"}, "no field 'spans'"),
        ({"text": "a b", "spans": {"start": 0}}, "field 'spans' is an object; expected a list"),
        ({"text": "a b", "spans": ["x"]}, "span 1 is a string"),
        ({"text": "a b", "spans": [{"start": 0, "end": 1}]}, "span 1 has no 'label'"),
        ({"text": "a b", "spans": [span(0, "1")]}, "span 1 'end' is a string; expected an integer"),
        ({"text": "a b", "spans": [span(0.0, 1)]}, "span 1 'start' is a number; expected an integer"),
        ({"text": "a b", "spans": [span(True, 1)]}, "span 1 'start' is a boolean"),
        ({"text": "a b", "spans": [span(0, 1, "")]}, "'label' must be a non-empty string"),
        ({"text": "a b", "spans": [span(2, 2)]}, "starts at 2 but ends at 2"),
        ({"text": "a b", "spans": [span(0, 4)]}, r"\[0, 4\) is out of range; the text has 3 characters"),
        ({"text": "a b", "spans": [span(-1, 1)]}, "out of range"),
        ({"text": "a b", "spans": [span(0, 3, "p"), span(2, 3, "q")]}, r"spans 'p' \[0, 3\) and 'q' \[2, 3\) overlap"),
        ({"text": "a  b", "spans": [span(0, 1), span(1, 3)]}, r"span 2 \[1, 3\) covers only whitespace"),
        ({"text": "a b", "spans": [], "intent": 7}, "field 'intent' is a number; expected a string"),
        ({"text": "a b", "spans": [], "intent": " "}, "empty intent"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", {"text": "fine", "spans": []}, "", line)
    msg = raises_one_line(message, read_tag_jsonl, path)
    assert msg.startswith(f"{path}:3: ")


def test_jsonl_intent_on_some_lines_only(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", {"text": "a", "spans": [], "intent": "i"},
                       {"text": "b", "spans": [], "intent": "i"}, {"text": "c", "spans": []})
    raises_one_line(r"c\.jsonl:3: has no intent but line 1 has one", read_tag_jsonl, path)
    path = write_jsonl(tmp_path / "d.jsonl", {"text": "a", "spans": []}, {"text": "b", "spans": [], "intent": "i"})
    raises_one_line(r"d\.jsonl:2: has an intent but line 1 has none", read_tag_jsonl, path)
    raises_one_line(r"e\.jsonl: no sentences", read_tag_jsonl, write_jsonl(tmp_path / "e.jsonl", "", " "))


# ---- dispatch, repair, ATIS ----------------------------------------------------------------------------------------


def test_read_tagged_missing_path(tmp_path):
    raises_one_line(r"nothing\.jsonl: no such file or folder", read_tagged, tmp_path / "nothing.jsonl")


def test_i_tags_opening_an_entity_are_repaired_and_counted(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="seqserve.train")
    path = tmp_path / "r.conll"
    path.write_text("to O\nnew I-city\nyork I-city\n\nI-x I-x\nb I-y\nc O\n", encoding="utf-8")
    sentences = read_conll(path)
    assert sentences[0].tags == ("O", "B-city", "I-city")
    assert sentences[1].tags == ("B-x", "B-y", "O")
    [record] = [r for r in caplog.records if r.name == "seqserve.train"]
    assert record.getMessage().startswith(f"{path}: repaired 3 tags")
    caplog.clear()
    good = [Sentence(("a",), ("B-x",))]
    assert check_sentences(good, "src") == good and not caplog.records
    raises_one_line("^src: no sentences$", check_sentences, [], "src")


@pytest.mark.skipif(not ATIS_DIR.is_dir(), reason="../shared/datasets/atis is not here")
def test_atis_recipe_reads_the_shared_copy(monkeypatch):
    monkeypatch.delenv(ATIS_ENV, raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded"))
    splits = atis()
    assert {k: len(v) for k, v in splits.items()} == {"train": 4478, "valid": 500, "test": 893}
    assert all(s.intent for s in splits["train"])
    assert any("#" in (s.intent or "") for s in splits["train"])
    assert len(splits["train"][1].words) == len(splits["train"][1].tags) == 33  # three utterances run together


def test_atis_env_dir_and_download_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded"))
    for split in ("train", "dev", "test"):
        write_split(tmp_path / "env", split, "fly to boston\n", "O O B-city\n", "atis_flight\n")
    monkeypatch.setenv(ATIS_ENV, str(tmp_path / "env"))
    assert {k: len(v) for k, v in atis().items()} == {"train": 1, "valid": 1, "test": 1}

    def offline(url, timeout=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    msg = raises_one_line("could not be downloaded", atis, tmp_path / "nowhere")
    assert "nowhere/train.seq.in" in msg and "pass --data-dir or set SEQSERVE_ATIS_DIR" in msg

    class Response:
        def __init__(self, body: str):
            self.body = body.encode()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return self.body

    fake = {"seq.in": "list flights\n", "seq.out": "O O\n", "label": "atis_flight#atis_airfare\n"}
    urls = []

    def serve(url, timeout=None):
        urls.append(url)
        return Response(fake[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "train.seq.in").write_text("list flights\n", encoding="utf-8")  # kept, not fetched
    splits = atis(tmp_path / "cache")
    assert splits["test"] == [Sentence(("list", "flights"), ("O", "O"), "atis_flight#atis_airfare")]
    assert len(urls) == 8 and urls[0] == "https://raw.githubusercontent.com/monologg/JointBERT/master/data/atis/train/seq.out"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        f"{s}.{f}" for s in ("train", "dev", "test") for f in ("seq.in", "seq.out", "label"))


def test_default_atis_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(ATIS_ENV, str(tmp_path))
    assert tag_data.default_atis_dir() == tmp_path
    monkeypatch.delenv(ATIS_ENV)
    assert tag_data.default_atis_dir().parts[-3:] == ("shared", "datasets", "atis") or \
        tag_data.default_atis_dir() == Path.home() / ".cache" / "seqserve" / "atis"
