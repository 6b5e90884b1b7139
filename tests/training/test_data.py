import gzip
import json

import pytest

from training.data import (
    DataError,
    Example,
    read_labelled,
    read_parallel_files,
    read_parallel_table,
    stratified_split,
)


def test_csv_tsv_jsonl_with_configurable_fields(tmp_path):
    (tmp_path / "a.csv").write_text('review,stars\n"Good, really",5\nbad,1\n', encoding="utf-8")
    (tmp_path / "a.tsv").write_text("x\ty\nGood\t5\nbad\t1\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(json.dumps({"t": "Good", "l": 5}) + "\n\n" + json.dumps({"t": "bad", "l": 1}))
    assert read_labelled(tmp_path / "a.csv", "review", "stars") == [Example("Good, really", "5"), Example("bad", "1")]
    assert [e.label for e in read_labelled(tmp_path / "a.tsv", "x", "y")] == ["5", "1"]
    assert [e.text for e in read_labelled(tmp_path / "a.jsonl", "t", "l")] == ["Good", "bad"]


def test_headerless_columns_by_index_and_gzip(tmp_path):
    with gzip.open(tmp_path / "b.tsv.gz", "wt", encoding="utf-8") as fh:
        fh.write("pos\tnice one\textra\nneg\tnope\textra\n")
    assert read_labelled(tmp_path / "b.tsv.gz", "1", "0") == [Example("nice one", "pos"), Example("nope", "neg")]


@pytest.mark.parametrize(
    ("content", "fields", "message"),
    [
        (b"text,label\n", ("text", "label"), "no labelled examples"),
        (b"", ("text", "label"), "empty"),
        (b"text,label\na,x\nb,x\n", ("text", "label"), "only one class"),
        (b"words,label\na,x\n", ("text", "label"), ":1: no column 'text'"),
        (b"text,label\na,x\nb\xff\xfe,y\n", ("text", "label"), ":3: bytes that are not UTF-8"),
        (b"text,label\na,x\nonly-one-column\n", ("0", "1"), ":3: expected at least 2 columns"),
    ],
)
def test_reader_errors_name_file_and_line(tmp_path, content, fields, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_labelled(path, *fields)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_jsonl_error_line_and_missing_file(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a", "label": "p"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"x.jsonl:2: invalid JSON"):
        read_labelled(path)
    with pytest.raises(DataError, match="no such file"):
        read_labelled(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="unknown format"):
        read_labelled(tmp_path / "x.parquet")


def test_stratified_split_is_deterministic_and_keeps_shares():
    examples = [Example(f"t{i}", "a" if i % 4 else "b") for i in range(400)]
    first = stratified_split(examples, 0.1, 0.2, seed=3)
    assert first == stratified_split(examples, 0.1, 0.2, seed=3)
    assert first != stratified_split(examples, 0.1, 0.2, seed=4)
    train, valid, test = first
    assert (len(train), len(valid), len(test)) == (280, 40, 80)
    assert sum(e.label == "b" for e in test) == 20  # a quarter, as in the whole set
    assert not {e.text for e in train} & {e.text for e in test}


def test_parallel_readers(tmp_path):
    (tmp_path / "s.txt").write_text("a b\nc\n", encoding="utf-8")
    (tmp_path / "t.txt").write_text("x y\nz\n", encoding="utf-8")
    (tmp_path / "short.txt").write_text("only one\n", encoding="utf-8")
    assert [p.tgt for p in read_parallel_files(tmp_path / "s.txt", tmp_path / "t.txt")] == ["x y", "z"]
    with pytest.raises(DataError, match="has 2 lines but .* has 1"):
        read_parallel_files(tmp_path / "s.txt", tmp_path / "short.txt")
    (tmp_path / "p.tsv").write_text("Go.\tGeh.\tCC-BY attribution\nHi.\tHallo.\tCC-BY\n", encoding="utf-8")
    assert [(p.src, p.tgt) for p in read_parallel_table(tmp_path / "p.tsv")] == [("Go.", "Geh."), ("Hi.", "Hallo.")]
    (tmp_path / "e.tsv").write_text("\t\n", encoding="utf-8")
    with pytest.raises(DataError, match="no sentence pairs"):
        read_parallel_table(tmp_path / "e.tsv")


def test_fields_longer_than_the_csv_default_limit_are_read(tmp_path):
    long_text = "word " * 40_000  # 200,000 characters; csv's default limit is 131,072
    path = tmp_path / "long.csv"
    path.write_text(f'text,label\n"{long_text}",pos\nshort,neg\n', encoding="utf-8")
    assert [len(e.text) for e in read_labelled(path)] == [len(long_text), 5]


def test_malformed_csv_is_a_data_error_with_the_line(tmp_path):
    path = tmp_path / "cr.csv"
    path.write_text("text,label\na,x\nb\rc,y\n", encoding="utf-8")  # a bare carriage return inside a field
    with pytest.raises(DataError, match=r"cr.csv:3: malformed CSV"):
        read_labelled(path)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"text": "a", "label": None}, "field 'label' is null"),
        ({"text": "a", "label": ["x"]}, "field 'label' is a list"),
        ({"text": "a", "label": {"x": 1}}, "field 'label' is an object"),
        ({"text": None, "label": "x"}, "field 'text' is null"),
    ],
)
def test_jsonl_values_that_are_not_strings_or_numbers(tmp_path, record, message):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"text": "b", "label": 1}) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"x.jsonl:2: {message}; expected a string or a number"):
        read_labelled(path)


def test_empty_label_cells_name_the_line(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("text,label\na,x\nb, \nc,y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"e.csv:3: empty label"):
        read_labelled(path)
