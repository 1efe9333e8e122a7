"""Text corpora as records (#13): the --text-field of .jsonl, .json, .csv, .tsv, .parquet and .arrow files and of
`datasets` sources, trained on end to end with a tokenizer trained on them, and every malformed input as one line
naming the file and place; globs; documents read one at a time and their tokens spilled to memmaps that
TokenWindows pickles as their file."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from mambakit.apps.text import data
from mambakit.apps.text.data import (
    HubSource,
    encode_split,
    expand_paths,
    iter_documents,
    read_documents,
    training_documents,
)
from mambakit.apps.text.tokenizer import ByteTokenizer, HFTokenizer

from mambakit.cli import main
from mambakit.datasets import TokenWindows
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


def test_a_glob_reads_the_files_it_matches_in_order_and_one_that_matches_nothing_is_one_line(tmp_path, monkeypatch):
    for name in ("b/two.txt", "a/one.txt", "a/deep/three.txt", "a/skip.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    assert expand_paths([tmp_path / "**" / "*.txt"]) == [
        tmp_path / n for n in ("a/deep/three.txt", "a/one.txt", "b/two.txt")
    ]
    monkeypatch.chdir(tmp_path)
    assert read_documents(expand_paths([Path("a/*.txt"), Path("b")])) == ["a/one.txt", "b/two.txt"]
    with pytest.raises(UserError, match=r"^c/\*\.txt: no files match$"):
        expand_paths([Path("c/*.txt")])


def test_bytes_that_are_not_utf8_are_named_with_their_offset_or_replaced(tmp_path, capsys):
    # Past the first chunk a file handle decodes, so the offset must come from the file, not the chunk.
    lines = "".join(json.dumps({"text": text}) + "\n" for text in TEXTS * 3).encode()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(lines + b'{"text": "caf\xe9"}\n')
    out = ["--max-steps", "1", "--batch-size", "2", "--seq-len", "16", "--out", str(tmp_path / "run")]
    assert main(["train", "text", "--data", str(bad), *out]) == 2
    error = capsys.readouterr().err
    assert f"bad.jsonl: not UTF-8 text (invalid byte at offset {len(lines) + 13}); convert it" in error
    assert "--errors replace" in error
    assert read_documents([bad], errors="replace")[-1] == "caf\ufffd"
    assert main(["train", "text", "--data", str(bad), "--errors", "replace", *out]) == 0
    assert main(["train", "text", "--data", str(bad), "--errors", "ignore", *out]) == 2
    assert "--errors ignore: choose one of strict, replace" in capsys.readouterr().err
    cut = tmp_path / "cut.txt"  # ends inside a character
    cut.write_bytes("naïve".encode()[:3])
    with pytest.raises(UserError, match="cut.txt: not UTF-8 text \\(invalid byte at offset 2\\)"):
        read_documents([cut])


def test_a_datasets_folder_is_read_offline_and_a_hub_id_without_a_network_is_one_line(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    parquet_io = pytest.importorskip("pyarrow.parquet")
    pyarrow = pytest.importorskip("pyarrow")

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "corpus"
    folder.mkdir()
    parquet_io.write_table(pyarrow.table({"body": TEXTS[:5], "id": list(range(5))}), folder / "train.parquet")
    sources = expand_paths([Path(f"hf:{folder}")])
    assert sources == [HubSource(str(folder))]
    assert list(iter_documents(sources, "body")) == TEXTS[:5]
    with pytest.raises(UserError, match=r"\(record 0\): no field 'text' \(fields: body, id\); choose one with"):
        read_documents(sources)
    # No network here; offline mode makes `datasets` say so at once instead of retrying.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as raised:
        read_documents(expand_paths([Path("hf:someone/corpus:en")]))
    assert str(raised.value).startswith("hf:someone/corpus:en: cannot load it with `datasets` (")
    assert "\n" not in str(raised.value)


def _reference_split(texts: list[str], eval_every: int = 20) -> tuple[list[int], list[int]]:
    """The split rule spelled out: every eval_every-th document held out, else the last tenth of the stream."""
    tokenizer = ByteTokenizer()
    train, held_out = [], []
    for index, text in enumerate(texts):
        target = held_out if index % eval_every == eval_every - 1 else train
        target.extend([*tokenizer.encode(text), tokenizer.eos_token_id])
    if not held_out:
        cut = int(len(train) * 0.9)
        train, held_out = train[:cut], train[cut:]
    return train, held_out


@pytest.mark.parametrize("count", [40, 5])
def test_encode_split_spills_to_memmaps_and_evaluation_encodes_the_same_held_out_stream(tmp_path, monkeypatch, count):
    texts = TEXTS[:count]
    train, held_out = _reference_split(texts)
    in_memory = encode_split(iter(texts), ByteTokenizer())
    assert [a.tolist() for a in in_memory] == [train, held_out]
    assert all(type(a) is np.ndarray and a.dtype == np.int16 for a in in_memory)
    monkeypatch.setattr(data, "SPILL_TOKENS", 100)
    monkeypatch.setattr(data, "BATCH_DOCUMENTS", 3)
    spilled = encode_split(iter(texts), ByteTokenizer(), spill_dir=tmp_path / "tokens")
    assert all(isinstance(a, np.memmap) and not a.flags.writeable for a in spilled)
    assert [a.tolist() for a in spilled] == [train, held_out]
    assert sorted(p.name for p in (tmp_path / "tokens").iterdir()) == (
        ["held_out.tokens", "train.tokens"] if count == 40 else ["train.tokens"]
    )
    for spill_dir in (None, tmp_path / "eval"):
        nothing, evaluated = encode_split(iter(texts), ByteTokenizer(), spill_dir=spill_dir, keep_train=False)
        assert len(nothing) == 0 and evaluated.tolist() == held_out


def test_evaluation_stops_encoding_training_documents_once_the_held_out_stream_begins(monkeypatch):
    encoded = []

    class Counting(ByteTokenizer):
        def encode_batch(self, texts: list[str]) -> list[list[int]]:
            encoded.extend(texts)
            return super().encode_batch(texts)

    monkeypatch.setattr(data, "BATCH_DOCUMENTS", 5)
    encode_split(TEXTS, Counting(), keep_train=False)
    assert encoded == TEXTS[:20] + [TEXTS[39]]


def test_a_tokenizer_trains_only_on_text_that_is_not_held_out():
    many = [f"{i}" for i in range(45)]
    assert list(training_documents(iter(many))) == [t for i, t in enumerate(many) if i not in (19, 39)]
    assert list(training_documents(iter(["abcd", "efghij", "k" * 10]))) == ["abcd", "efghij", "kkkkkkkk"]
    assert list(training_documents(["0123456789"])) == ["012345678"]
    assert list(training_documents([])) == []


def test_a_trained_tokenizer_fits_an_iterator_and_encodes_batches_as_one_by_one():
    pytest.importorskip("tokenizers")
    tokenizer = HFTokenizer.to_be_trained(300)
    tokenizer.fit(training_documents(iter(TEXTS)))
    assert tokenizer.encode_batch(TEXTS[:3]) == [tokenizer.encode(text) for text in TEXTS[:3]]
    assert ByteTokenizer().encode_batch(["é", ""]) == [[195, 169], []]


def test_token_windows_over_a_memmap_pickle_as_its_file_not_its_tokens(tmp_path):
    path = tmp_path / "stream.tokens"
    np.arange(50_000, dtype=np.int32).tofile(path)
    stream = np.memmap(path, dtype=np.int32, mode="r")
    for windows in (TokenWindows(stream, 16, start=1000, stop=40_000), TokenWindows(stream[1000:40_000], 16)):
        pickled = pickle.dumps(windows)
        assert len(pickled) < 1000
        copy = pickle.loads(pickled)
        assert isinstance(copy.tokens, np.memmap) and len(copy) == len(windows) == 39_000 // 16
        for index in (0, 7, len(windows) - 1):
            assert torch.equal(copy[index]["input_ids"], windows[index]["input_ids"])
        assert copy[1]["input_ids"].tolist() == list(range(1016, 1032)) and copy[1]["labels"].dtype == torch.long
    in_memory = TokenWindows(np.arange(40, dtype=np.int16), 8)
    assert pickle.loads(pickle.dumps(in_memory))[4]["input_ids"].tolist() == list(range(32, 40))
    with pytest.raises(ValueError, match="window length must be >= 2"):
        TokenWindows(stream, 1)


def test_streams_past_the_spill_size_train_and_evaluate_from_token_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "SPILL_TOKENS", 500)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(TEXTS))
    out = tmp_path / "run"
    arguments = ["--data", str(corpus), "--seq-len", "16", "--batch-size", "2"]
    assert main(["train", "text", *arguments, "--max-steps", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "tokens").iterdir()) == ["train.tokens"]  # one document: split by a cut
    capsys.readouterr()
    assert main(["eval", "text", "-c", str(out / "best"), *arguments[:2]]) == 0
    assert "bits_per_byte" in capsys.readouterr().out
