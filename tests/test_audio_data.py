"""The audio app's data layer: quantisation, soundfile I/O, readers and their one-line errors, the embedded FSDD,
the LM and classification datasets."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

soundfile = pytest.importorskip("soundfile")
torchaudio_functional = pytest.importorskip("torchaudio.functional")

from mambakit.apps.audio import data as audio_data  # noqa: E402
from mambakit.apps.audio.data import (  # noqa: E402
    MU_LAW_VARIANT,
    AudioClassificationDataset,
    AudioDataError,
    AudioLMDataset,
    AudioRecord,
    embedded_dataset,
    linear_decode,
    linear_encode,
    load_labelled_audio,
    mu_law_decode,
    mu_law_encode,
    read_audio,
    read_audio_inputs,
    silence_code,
    write_wav,
)

from mambakit.errors import UserError  # noqa: E402
from mambakit.models import IGNORE_INDEX  # noqa: E402


def _tone(n: int = 800, rate: int = 8000, freq: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def _one_line(error: pytest.ExceptionInfo, name: str) -> None:
    message = str(error.value)
    assert "\n" not in message and name in message
    assert isinstance(error.value, UserError)


# --- quantisation -------------------------------------------------------------------------------------------


def test_mu_law_matches_torchaudio_and_round_trips() -> None:
    assert MU_LAW_VARIANT == "torchaudio-fixed-mu255"
    x = np.linspace(-1, 1, 20001, dtype=np.float32)
    codes = mu_law_encode(x)
    assert codes.dtype == np.uint8
    expected = torchaudio_functional.mu_law_encoding(torch.from_numpy(x), 256).numpy()
    np.testing.assert_array_equal(codes.astype(np.int64), expected)
    known = np.array([-1.0, -0.5, 0.0, 0.001, 0.5, 1.0], np.float32)
    np.testing.assert_array_equal(mu_law_encode(known), [0, 16, 128, 133, 239, 255])
    tensor_codes = mu_law_encode(torch.from_numpy(known))
    assert tensor_codes.dtype == torch.int64
    assert tensor_codes.tolist() == torchaudio_functional.mu_law_encoding(torch.from_numpy(known), 256).tolist()
    decoded = mu_law_decode(codes)
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(
        decoded, torchaudio_functional.mu_law_decoding(torch.from_numpy(codes.astype(np.int64)), 256).numpy()
    )
    # mu-law error bound: half a code step (1/255) of the companded value, times dx/dy = (1/mu + |x|) ln(1 + mu)
    bound = (1 / 255 + np.abs(x)) * np.log1p(255) / 255 * 1.03
    assert np.all(np.abs(decoded - x) <= bound)
    assert np.abs(decoded - x).max() < 0.022
    small = np.abs(x) < 0.01  # near silence the steps are fine: under 0.0005
    assert np.abs(decoded - x)[small].max() < 5e-4
    assert silence_code("mu-law") == 128
    assert abs(float(mu_law_decode(np.array([128], np.uint8))[0])) < 1e-4 + 1 / 255 * 2
    np.testing.assert_array_equal(mu_law_encode(np.array([-3.0, 3.0])), [0, 255])  # clipped


def test_linear_round_trip() -> None:
    x = np.linspace(-1, 1, 5001, dtype=np.float32)
    codes = linear_encode(x)
    assert codes.dtype == np.uint8 and codes.min() == 0 and codes.max() == 255
    assert np.abs(linear_decode(codes) - x).max() <= 1 / 255 + 1e-6
    np.testing.assert_array_equal(linear_decode(np.arange(256, dtype=np.uint8)), linear_decode(torch.arange(256)))
    assert silence_code("linear") == 128
    with pytest.raises(UserError, match="unknown audio encoding"):
        silence_code("a-law")


# --- files --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_write_read_round_trip(tmp_path: Path, suffix: str) -> None:
    tone = _tone()
    path = tmp_path / f"tone{suffix}"
    if suffix == ".wav":
        write_wav(path, tone, 8000)
        assert soundfile.info(str(path)).subtype == "PCM_16"
    else:
        soundfile.write(str(path), tone, 8000, subtype="PCM_16", format="FLAC")
    back = read_audio(path, 8000)
    assert back.dtype == np.float32 and back.shape == tone.shape
    assert np.abs(back - tone).max() < 1 / 32768 * 2
    write_wav(tmp_path / "t.wav", torch.from_numpy(tone), 8000)  # tensors too
    assert read_audio(tmp_path / "t.wav").shape == tone.shape


def test_stereo_is_downmixed(tmp_path: Path) -> None:
    left, right = _tone(), _tone(freq=1000.0) * 0.5
    soundfile.write(str(tmp_path / "s.flac"), np.stack([left, right], 1), 8000, subtype="PCM_16")
    back = read_audio(tmp_path / "s.flac", 8000)
    assert back.ndim == 1
    np.testing.assert_allclose(back, (left + right) / 2, atol=2e-4)


def test_resampling_warns_once(tmp_path: Path) -> None:
    audio_data._WARNED_RATES.discard((16000, 8000))
    write_wav(tmp_path / "a.wav", _tone(1600, rate=16000), 16000)
    with pytest.warns(UserWarning, match="16000 Hz.*8000 Hz"):
        back = read_audio(tmp_path / "a.wav", 8000)
    assert back.shape == (800,)
    expected = torchaudio_functional.resample(torch.from_numpy(read_audio(tmp_path / "a.wav")), 16000, 8000)
    np.testing.assert_allclose(back, expected.numpy(), atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_audio(tmp_path / "a.wav", 8000)  # no second warning


def test_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioDataError) as error:
        read_audio(tmp_path / "missing.wav")
    _one_line(error, "missing.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 3)
    with pytest.raises(AudioDataError) as error:
        read_audio(tmp_path / "corrupt.wav")
    _one_line(error, "corrupt.wav")
    (tmp_path / "text.flac").write_text("not audio at all\n")
    with pytest.raises(AudioDataError) as error:
        read_audio(tmp_path / "text.flac")
    _one_line(error, "text.flac")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioDataError) as error:
        read_audio(tmp_path / "empty.wav")
    _one_line(error, "empty.wav")
    write_wav(tmp_path / "silent.wav", np.zeros(0, np.float32), 8000)
    with pytest.raises(AudioDataError, match="zero-length") as error:
        read_audio(tmp_path / "silent.wav")
    _one_line(error, "silent.wav")
    write_wav(tmp_path / "zeros.wav", np.zeros(50, np.float32), 8000)
    with pytest.warns(UserWarning, match=r"zeros.wav: silent clip"):
        assert not read_audio(tmp_path / "zeros.wav").any()
    write_wav(tmp_path / "full.wav", _tone(), 8000)
    (tmp_path / "truncated.wav").write_bytes((tmp_path / "full.wav").read_bytes()[:44])
    with pytest.raises(AudioDataError) as error:
        read_audio(tmp_path / "truncated.wav")
    _one_line(error, "truncated.wav")


# --- readers ------------------------------------------------------------------------------------------------


def test_readers(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    for name in ("0_alice_0.wav", "0_alice_1.wav", "1_bob_0.wav", "2_bob_7.wav"):
        write_wav(flat / name, _tone(), 8000)
    (flat / "notes.txt").write_text("hi")
    with pytest.warns(UserWarning, match="skipped 1 file"):
        labelled = load_labelled_audio(flat)
    assert labelled.classes == ["0", "1", "2"] and [r.label for r in labelled.records] == ["0", "0", "1", "2"]
    assert labelled.splits is None

    classes = tmp_path / "classes"
    for label in ("dog", "cat"):
        write_wav(classes / label / "a.wav", _tone(), 8000)
        write_wav(classes / label / "deep" / "b.wav", _tone(), 8000)
    labelled = load_labelled_audio(classes)
    assert labelled.classes == ["cat", "dog"] and len(labelled.records) == 4

    table = tmp_path / "t.csv"
    table.write_text("path,label,split\nflat/0_alice_0.wav,zero,train\nflat/1_bob_0.wav,one,test\n")
    labelled = load_labelled_audio(table)
    assert labelled.classes == ["one", "zero"] and labelled.splits == {"train": [0], "test": [1]}
    table.write_text("path,label\nflat/nothere.wav,zero\n")
    with pytest.raises(AudioDataError) as error:
        load_labelled_audio(table)
    _one_line(error, "t.csv:2")

    bad = tmp_path / "bad"
    write_wav(bad / "nounderscore.wav", _tone(), 8000)
    with pytest.raises(AudioDataError) as error:
        load_labelled_audio(bad)
    _one_line(error, "nounderscore.wav")

    with pytest.warns(UserWarning, match="not audio"):
        inputs = read_audio_inputs(flat)
    assert len(inputs) == 4 and all(r.label is None for r in inputs)

    # a corrupt file in a folder fails when decoded, naming it
    (flat / "3_carl_0.wav").write_bytes(b"garbage" * 20)
    with pytest.warns(UserWarning):
        labelled = load_labelled_audio(flat)
    dataset = AudioClassificationDataset(labelled.records, labelled.classes, 100)
    with pytest.raises(AudioDataError) as error:
        dataset[len(dataset) - 1]
    _one_line(error, "3_carl_0.wav")


# --- embedded data ------------------------------------------------------------------------------------------


def test_embedded_dataset() -> None:
    data = embedded_dataset(seed=0)
    assert len(data.records) == 3000 and data.classes == [str(d) for d in range(10)]
    assert data.splits is not None
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 2400, "val": 300, "test": 300}
    for split, indices in data.splits.items():
        counts = Counter(data.records[i].label for i in indices)
        assert set(counts.values()) == {len(indices) // 10}, split
    for i in data.splits["test"]:
        assert int(data.records[i].source.rsplit("_", 1)[1].split(".")[0]) < 5
    for i in data.splits["train"] + data.splits["val"]:
        assert int(data.records[i].source.rsplit("_", 1)[1].split(".")[0]) >= 5
    record = data.records[0]
    assert record.sample_rate == 8000 and record.encoding == "mu-law" and record.audio.dtype == np.uint8
    assert sum(len(r.audio) for r in data.records) == 10_498_424
    assert embedded_dataset(seed=0).splits == data.splits
    assert embedded_dataset(seed=1).splits["val"] != data.splits["val"]
    assert embedded_dataset(seed=1).splits["test"] == data.splits["test"]


# --- torch datasets -----------------------------------------------------------------------------------------


def _record(n: int, label: str = "a") -> AudioRecord:
    codes = (np.arange(n) % 200 + 10).astype(np.uint8)
    return AudioRecord(codes, label, f"clip{n}", None, 8000, "mu-law")


def test_lm_dataset_crop_pad_labels() -> None:
    dataset = AudioLMDataset([_record(50), _record(10, "b")], crop_length=20, class_names=["a", "b"])
    # The clip is preceded by one silence sample (128): context, never a label.
    clip = [128] + [10 + i for i in range(50)]
    starts = set()
    for seed in range(30):
        torch.manual_seed(seed)
        item = dataset[0]
        assert item["input_ids"].dtype == torch.int64 and item["input_ids"].shape == (20,)
        ids = item["input_ids"].tolist()
        start = clip.index(ids[1]) - 1
        assert ids == clip[start : start + 20]
        expected_labels = [IGNORE_INDEX] + ids[1:] if start == 0 else ids
        assert item["labels"].tolist() == expected_labels
        starts.add(start)
    assert len(starts) > 1 and min(starts) >= 0 and max(starts) <= 31
    assert item["class_ids"].shape == () and int(item["class_ids"]) == 0
    torch.manual_seed(3)
    first = dataset[0]["input_ids"]
    torch.manual_seed(3)
    assert torch.equal(first, dataset[0]["input_ids"])
    short = dataset[1]
    assert short["input_ids"].tolist() == [128] + list(range(10, 20)) + [128] * 9
    assert short["labels"].tolist() == [IGNORE_INDEX] + list(range(10, 20)) + [IGNORE_INDEX] * 9
    assert int(short["class_ids"]) == 1
    fixed = AudioLMDataset([_record(50)], crop_length=20, random_crop=False)
    assert fixed[0]["input_ids"][:2].tolist() == [128, 10] and "class_ids" not in fixed[0]
    linear = AudioLMDataset([_record(5)], crop_length=8, encoding="linear")
    assert linear[0]["input_ids"][6:].tolist() == [128] * 2  # re-encoded from mu-law, padded with linear silence


def test_lm_dataset_reads_files(tmp_path: Path) -> None:
    write_wav(tmp_path / "0_a_0.wav", _tone(300), 8000)
    dataset = AudioLMDataset([AudioRecord(tmp_path / "0_a_0.wav")], crop_length=400)
    item = dataset[0]
    expected = mu_law_encode(read_audio(tmp_path / "0_a_0.wav")).astype(np.int64)
    assert item["input_ids"][1:301].tolist() == expected.tolist()
    assert (item["labels"][301:] == IGNORE_INDEX).all() and item["labels"][0] == IGNORE_INDEX


def test_classification_dataset() -> None:
    dataset = AudioClassificationDataset([_record(50), _record(10, "b")], ["a", "b"], crop_length=20)
    long, short = dataset[0], dataset[1]
    assert long["input_ids"].tolist() == [10 + i for i in range(15, 35)]  # centred: start (50 - 20) // 2
    assert long["attention_mask"].tolist() == [1] * 20 and int(long["labels"]) == 0
    assert short["attention_mask"].tolist() == [1] * 10 + [0] * 10
    assert short["input_ids"][10:].tolist() == [128] * 10 and int(short["labels"]) == 1
    assert long["labels"].dtype == torch.int64 and long["labels"].shape == ()
    with pytest.raises(AudioDataError, match="clip10"):
        AudioClassificationDataset([_record(10, "zebra")], ["a", "b"], crop_length=20)


# --- Hugging Face inputs: datasets dumps and audiofolders -------------------------------------------------------


def _wav_bytes(tmp_path: Path, n: int, freq: float) -> bytes:
    write_wav(tmp_path / "clip.wav", _tone(n, freq=freq), 8000)
    return (tmp_path / "clip.wav").read_bytes()


def _write_dump(file: Path, audio: list, labels: list[int], names: list[str]) -> None:
    import json

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    features = {"audio": {"_type": "Audio"}, "label": {"_type": "ClassLabel", "names": names}}
    schema = pa.schema(
        [("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("label", pa.int64())],
        metadata={"huggingface": json.dumps({"info": {"features": features}})},
    )
    pq.write_table(pa.table({"audio": audio, "label": labels}, schema=schema), file)


def test_datasets_dump_with_audio_bytes_and_class_label_names(tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    clip = _wav_bytes(tmp_path, 300, 300.0)
    rows = [{"bytes": clip, "path": None}] * 3
    _write_dump(dump / "train-00000-of-00001.parquet", rows, [0, 1, 2], ["zero", "one", "two"])
    _write_dump(dump / "test-00000-of-00001.parquet", rows[:2], [1, 0], ["zero", "one", "two"])
    data = load_labelled_audio(dump)
    assert data.classes == ["zero", "one", "two"]  # the ClassLabel order, not sorted
    assert [r.label for r in data.records] == ["one", "zero", "zero", "one", "two"]
    assert data.splits == {"test": [0, 1], "train": [2, 3, 4]}
    item = AudioClassificationDataset(data.records, data.classes, crop_length=400)[4]
    expected = mu_law_encode(read_audio(tmp_path / "clip.wav")).astype(np.int64)
    assert item["input_ids"][:300].tolist() == expected.tolist() and int(item["labels"]) == 2
    # Without labels (predict), a path instead of bytes, relative to the dump's folder.
    (dump / "clips").mkdir()
    write_wav(dump / "clips" / "a.wav", _tone(200), 8000)
    _write_dump(tmp_path / "paths.parquet", [{"bytes": None, "path": "dump/clips/a.wav"}], [-1], ["x", "y"])
    records = read_audio_inputs([tmp_path / "paths.parquet"])
    assert records[0].label is None and records[0].audio == tmp_path / "dump" / "clips" / "a.wav"


def test_datasets_dump_errors_are_one_line(tmp_path: Path) -> None:
    _write_dump(tmp_path / "bad.parquet", [{"bytes": b"not audio", "path": None}] * 2, [0, 1], ["a", "b"])
    data = load_labelled_audio(tmp_path / "bad.parquet")
    with pytest.raises(AudioDataError, match=r"bad.parquet \(row 1\): unreadable audio") as error:
        AudioClassificationDataset(data.records, data.classes, crop_length=50)[1]
    assert "\n" not in str(error.value)
    _write_dump(tmp_path / "range.parquet", [{"bytes": b"x", "path": None}], [5], ["a", "b"])
    with pytest.raises(AudioDataError, match="out of range for the 2 ClassLabel names"):
        load_labelled_audio(tmp_path / "range.parquet")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.parquet").write_bytes(b"garbage")
    with pytest.raises(AudioDataError, match="not a readable Parquet file"):
        load_labelled_audio(tmp_path / "empty")


def test_hugging_face_audiofolder_metadata(tmp_path: Path) -> None:
    folder = tmp_path / "audiofolder"
    folder.mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        write_wav(folder / name, _tone(100), 8000)
    (folder / "metadata.csv").write_text("file_name,label\na.wav,yes\nb.wav,no\nc.wav,yes\n")
    data = load_labelled_audio(folder)
    assert data.classes == ["no", "yes"] and [r.audio for r in data.records] == [
        folder / n for n in ("a.wav", "b.wav", "c.wav")
    ]
