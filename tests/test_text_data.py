"""Text corpora as records (#13): the --text-field of .jsonl, .json, .csv, .tsv, .parquet and .arrow files, trained
on end to end with a tokenizer trained on them, and every malformed input as one line naming the file and place."""

from __future__ import annotations

import json

import pytest
from mambakit.apps.text.data import read_documents

from mambakit.cli import main
from mambakit.errors import UserError

TEXTS = [f"document {i}: selective state spaces read long sequences in linear time." * 3 for i in range(40)]


def test_every_record_format_gives_the_same_documents(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    parquet_io = pytest.importorskip("pyarrow.parquet")

    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "body": t}) for i, t in enumerate(TEXTS)) + "\n\n")
    as_json = tmp_path / "a.json"
    as_json.write_text(json.dumps([{"body": t} for t in TEXTS] + [{"body": None}]))
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("id,body\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS)))
    tsv = tmp_path / "a.tsv"
    tsv.write_text("body\tid\n" + "".join(f"{t}\t{i}\n" for i, t in enumerate(TEXTS)))
    parquet = tmp_path / "a.parquet"
    parquet_io.write_table(pyarrow.table({"body": TEXTS, "id": list(range(40))}), parquet)
    for path in (jsonl, as_json, csv_file, tsv, parquet):
        assert read_documents([path], "body") == TEXTS, path.name


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "fine"}\n{"text": oops}\n', "bad.jsonl: line 2 is not JSON"),
        ("fields.jsonl", '{"title": "a", "body": "b"}\n', "no field 'text' (fields: title, body); choose one with"),
        ("numbers.jsonl", '{"text": 7}\n', "field 'text' holds int, not text"),
        ("object.json", '{"text": "a"}', None),
        ("list.json", "[1, 2]", "(record 0): a int, not a record of named fields"),
        ("columns.csv", "title,body\na,b\n", "(line 2): no field 'text' (fields: title, body)"),
    ],
)
def test_malformed_records_are_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    if message is None:  # one object per line is JSON Lines, whatever the suffix
        assert read_documents([path]) == ["a"]
        return
    with pytest.raises(UserError) as raised:
        read_documents([path])
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_train_on_jsonl_with_a_trained_tokenizer_then_eval_and_generate(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"body": t}) for t in TEXTS))
    out = tmp_path / "run"
    arguments = ["train", "text", "--data", str(corpus), "--text-field", "body", "--tokenizer", "train:300"]
    assert main([*arguments, "--seq-len", "32", "--max-steps", "3", "--batch-size", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", "text", "-c", str(out / "best"), "--data", str(corpus)]) == 0  # the recorded field
    assert "bits_per_token" in capsys.readouterr().out
    assert main(["generate", "text", "-c", str(out / "best"), "--prompt", "document", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("document")
    assert main(["train", "text", "--data", str(corpus), "--max-steps", "1", "--out", str(tmp_path / "x")]) == 2
    assert "no field 'text' (fields: body); choose one with --text-field" in capsys.readouterr().err
