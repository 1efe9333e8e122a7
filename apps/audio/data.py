"""Audio for the audio app: 8-bit quantisation (mu-law, linear), reading and writing audio files through
soundfile, labelled clips from the user's data (a folder, class subfolders, a CSV/TSV of path,label rows,
FSDD-style file names) or the embedded Free Spoken Digit Dataset, and the torch datasets for raw-waveform language
modelling and classification.

I/O goes through soundfile (WAV, FLAC, OGG, ...); torchaudio is used only for `torchaudio.functional.resample`
(torchaudio's own file I/O needs TorchCodec and is gone from recent torchaudio). Reading a folder or table is
cheap: files are listed and checked to exist, but decoded when a dataset item asks for them (`read_audio`).

Every problem with a user's data raises `AudioDataError` (a `UserError`, so the CLI prints it as one line and
exits with code 2): one line naming the file (and the table row) and what to do.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch.utils.data import Dataset

from mambakit import hf_dumps, labelled_files
from mambakit.domains import Requirement
from mambakit.errors import UserError, described
from mambakit.hf_dumps import HF_SUFFIXES
from mambakit.labelled_files import read_label_table, some
from mambakit.models import IGNORE_INDEX
from mambakit.splits import SPLIT_NAMES

#: The mu-law variant of `mu_law_encode` / `mu_law_decode`, to record in checkpoints: torchaudio's
#: `mu_law_encoding` with a fixed scale (no per-clip normalisation), mu = 255, 256 codes.
MU_LAW_VARIANT = "torchaudio-fixed-mu255"
#: The encodings `encode` / `decode` and the datasets take.
ENCODINGS = ("mu-law", "linear")
#: Number of codes of the 8-bit encodings (the vocabulary of an audio language model).
NUM_CODES = 256
#: Suffixes (compared lowercased) of the files a folder's reader takes as audio; others are skipped with a warning.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".au", ".mp3")
TABLE_SUFFIXES = (".csv", ".tsv")
#: Header names accepted for a table's audio path column (compared lowercased), first match wins.
PATH_COLUMNS = ("path", "audio", "audio_path", "file", "file_name", "filename", "filepath")
#: Column names tried for a `datasets` dump when its metadata names no Audio feature.
HF_AUDIO_COLUMNS = ("audio",)
#: The rate of the embedded data (FSDD: 8 kHz), the default rate of the audio tasks.
DEFAULT_SAMPLE_RATE = 8000
#: What to install for the audio I/O.
AUDIO_EXTRA = "pip install 'mambakit[audio]'"
#: The optional packages of the audio domain; training and evaluating on the embedded data need none of them.
SOUNDFILE = Requirement("soundfile", "soundfile", "audio", needed_for="audio files (--data, --prompt, WAV output)")
TORCHAUDIO = Requirement("torchaudio.functional", "torchaudio", "audio", needed_for="resampling clips of another rate")
PYARROW = Requirement("pyarrow", "pyarrow", "audio", needed_for="Hugging Face datasets dumps (.parquet/.arrow)")

DATA_DIR = Path(__file__).resolve().with_name("data")
#: The embedded default data set (provenance and licence in data/README.md).
EMBEDDED_FILE = DATA_DIR / "fsdd_mulaw.npz"

#: Resampling warnings already given in this process, as (file rate, target rate).
_WARNED_RATES: set[tuple[int, int]] = set()


class AudioDataError(UserError):
    """Bad audio input; the message is one line: `file[:row]: what is wrong; what to do`."""


@dataclass(frozen=True, eq=False)
class AudioRecord:
    """One clip as read, not yet decoded.

    `audio` is a file path, an encoded audio file in memory (bytes, e.g. from a `datasets` dump), or the clip's
    8-bit codes (a uint8 array, `encoding` at `sample_rate`, as the embedded data holds them); `label` the class
    name when the input has one; `source` where it came from, for messages ("file", "table.csv:3 (a.wav)",
    "fsdd_mulaw.npz (7_jackson_32.wav)", "data.parquet (row 7)"); `split` the split ("train", "val", "test") the
    input assigns it to, if any.
    """

    audio: Path | bytes | np.ndarray
    label: str | None = None
    source: str = ""
    split: str | None = None
    sample_rate: int | None = None
    encoding: str | None = None


@dataclass
class LabelledAudio:
    """Labelled clips: `classes` are the class names in class-id order (sorted, integers in numeric order);
    `splits` maps "train"/"val"/"test" to record indices when the data brings a split, else it is None."""

    records: list[AudioRecord]
    classes: list[str]
    splits: dict[str, list[int]] | None = None


# --- quantisation -------------------------------------------------------------------------------------------

ArrayOrTensor = np.ndarray | torch.Tensor


def _as_float_tensor(x: ArrayOrTensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.float()
    array = np.asarray(x)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64 if array.dtype == np.float64 else np.float32))


def _codes_out(codes: torch.Tensor, like: ArrayOrTensor, levels: int) -> ArrayOrTensor:
    if isinstance(like, torch.Tensor):
        return codes
    array = codes.numpy()
    return array.astype(np.uint8) if levels <= 256 else array


@overload
def mu_law_encode(x: np.ndarray, mu: int = 255) -> np.ndarray: ...
@overload
def mu_law_encode(x: torch.Tensor, mu: int = 255) -> torch.Tensor: ...
def mu_law_encode(x: ArrayOrTensor, mu: int = 255) -> ArrayOrTensor:
    """Codes 0..mu of samples in [-1, 1] (clipped there first): torchaudio's `mu_law_encoding`, op for op
    (`MU_LAW_VARIANT`): y = sign(x) ln(1 + mu|x|) / ln(1 + mu), code = floor((y + 1) / 2 * mu + 0.5), with no
    per-clip normalisation. A NumPy array gives uint8 codes (int64 when mu > 255), a tensor int64 codes."""
    samples = _as_float_tensor(x).clamp(-1.0, 1.0)
    scale = torch.tensor(float(mu), dtype=samples.dtype, device=samples.device)
    companded = torch.sign(samples) * torch.log1p(scale * torch.abs(samples)) / torch.log1p(scale)
    codes = ((companded + 1) / 2 * scale + 0.5).to(torch.int64)
    return _codes_out(codes, x, mu + 1)


@overload
def mu_law_decode(codes: np.ndarray, mu: int = 255) -> np.ndarray: ...
@overload
def mu_law_decode(codes: torch.Tensor, mu: int = 255) -> torch.Tensor: ...
def mu_law_decode(codes: ArrayOrTensor, mu: int = 255) -> ArrayOrTensor:
    """float32 samples in [-1, 1] of mu-law codes 0..mu (torchaudio's `mu_law_decoding`); the type follows the
    input (array or tensor)."""
    # The float copy is made by numpy: the codes may be a read-only view of the embedded data.
    values = (
        codes.to(torch.float32)
        if isinstance(codes, torch.Tensor)
        else torch.from_numpy(np.asarray(codes, dtype=np.float32).copy())
    )
    scale = torch.tensor(float(mu), dtype=torch.float32, device=values.device)
    y = values / scale * 2 - 1.0
    samples = torch.sign(y) * (torch.exp(torch.abs(y) * torch.log1p(scale)) - 1.0) / scale
    return samples if isinstance(codes, torch.Tensor) else samples.numpy()


@overload
def linear_encode(x: np.ndarray, bits: int = 8) -> np.ndarray: ...
@overload
def linear_encode(x: torch.Tensor, bits: int = 8) -> torch.Tensor: ...
def linear_encode(x: ArrayOrTensor, bits: int = 8) -> ArrayOrTensor:
    """Codes 0..2**bits - 1 of samples in [-1, 1] (clipped), uniformly spaced: floor((x + 1) / 2 * (2**bits - 1)
    + 0.5). A NumPy array gives uint8 codes (bits <= 8), a tensor int64 codes."""
    top = (1 << bits) - 1
    samples = _as_float_tensor(x).clamp(-1.0, 1.0)
    codes = torch.floor((samples + 1) / 2 * top + 0.5).to(torch.int64)
    return _codes_out(codes, x, top + 1)


@overload
def linear_decode(codes: np.ndarray, bits: int = 8) -> np.ndarray: ...
@overload
def linear_decode(codes: torch.Tensor, bits: int = 8) -> torch.Tensor: ...
def linear_decode(codes: ArrayOrTensor, bits: int = 8) -> ArrayOrTensor:
    """float32 samples in [-1, 1] of linear codes 0..2**bits - 1."""
    values = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes).to(torch.float32)
    samples = values / float((1 << bits) - 1) * 2 - 1.0
    return samples if isinstance(codes, torch.Tensor) else samples.numpy()


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise UserError(f"unknown audio encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")


def encode(x: ArrayOrTensor, encoding: str = "mu-law") -> ArrayOrTensor:
    """8-bit codes of samples in [-1, 1] by `encoding` ("mu-law" or "linear")."""
    _check_encoding(encoding)
    return mu_law_encode(x) if encoding == "mu-law" else linear_encode(x)


def decode(codes: ArrayOrTensor, encoding: str = "mu-law") -> ArrayOrTensor:
    """float32 samples of 8-bit codes by `encoding` ("mu-law" or "linear")."""
    _check_encoding(encoding)
    return mu_law_decode(codes) if encoding == "mu-law" else linear_decode(codes)


def silence_code(encoding: str = "mu-law") -> int:
    """The code of 0.0 (128 for both 8-bit encodings): what short clips are padded with."""
    return int(np.asarray(encode(np.zeros(1, np.float32), encoding))[0])


# --- files --------------------------------------------------------------------------------------------------


def _soundfile() -> Any:
    return SOUNDFILE.load("reading and writing audio")


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """float32 samples at `to_rate` (torchaudio.functional.resample, its default windowed-sinc filter)."""
    if from_rate == to_rate:
        return np.asarray(samples, dtype=np.float32)
    audio_functional = TORCHAUDIO.load(f"resampling {from_rate} Hz audio to {to_rate} Hz")
    tensor = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    return audio_functional.resample(tensor, int(from_rate), int(to_rate)).numpy()


def read_audio(path: str | Path | bytes, sample_rate: int | None = None, source: str | None = None) -> np.ndarray:
    """float32 mono samples of an audio file soundfile reads (WAV, FLAC, OGG, ...), given as a path or as the
    file's bytes, channels averaged, resampled to `sample_rate` when given and the file's rate differs (warning
    once per pair of rates in a process).

    A missing file, one that does not decode (corrupt, truncated, not audio) or one with no samples is a one-line
    `AudioDataError` naming the file (or `source`, which says where bytes came from).
    """
    soundfile = _soundfile()
    if isinstance(path, bytes):
        where, readable = source or "audio bytes", io.BytesIO(path)
    else:
        path = Path(path)
        if not path.is_file():
            what = "is a directory, not an audio file" if path.is_dir() else "no such audio file"
            raise AudioDataError(f"{path}: {what}; check the path")
        where, readable = source or str(path), path
    try:
        samples, rate = soundfile.read(readable, dtype="float32", always_2d=True)
    except Exception as error:  # soundfile.LibsndfileError, RuntimeError, TypeError on bad data
        raise AudioDataError(
            f"{where}: unreadable audio, not a format soundfile reads or corrupt/truncated ({described(error)}); "
            f"replace or remove the file, or convert it to WAV or FLAC"
        ) from None
    if samples.shape[0] == 0:
        raise AudioDataError(f"{where}: zero-length clip (no samples); remove the file")
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioDataError(f"{where}: holds NaN or infinite samples; replace the file")
    if not np.any(mono):
        warnings.warn(f"{where}: silent clip (every sample is zero); it is used as it is", stacklevel=2)
    if sample_rate is not None and rate != sample_rate:
        if (rate, sample_rate) not in _WARNED_RATES:
            _WARNED_RATES.add((rate, sample_rate))
            warnings.warn(
                f"{where}: resampling {rate} Hz audio to {sample_rate} Hz (this warning is given once per pair of "
                f"rates)",
                stacklevel=2,
            )
        mono = resample(mono, rate, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """(sample rate, frames, channels) of an audio file, without decoding it; errors as `read_audio`'s."""
    path = Path(path)
    if not path.is_file():
        raise AudioDataError(f"{path}: no such audio file; check the path")
    try:
        info = _soundfile().info(str(path))
    except AudioDataError:
        raise
    except Exception as error:
        raise AudioDataError(f"{path}: unreadable audio ({described(error)}); replace or remove the file") from None
    return int(info.samplerate), int(info.frames), int(info.channels)


def write_wav(path: str | Path, samples: ArrayOrTensor, sample_rate: int) -> Path:
    """Write float samples in [-1, 1] (clipped; shape (frames,) or (frames, channels)) as a 16-bit PCM WAV file,
    creating its folder; returns the path."""
    path = Path(path)
    data = samples.detach().cpu().float().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    data = np.clip(np.asarray(data, dtype=np.float32), -1.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    _soundfile().write(str(path), data, int(sample_rate), subtype="PCM_16", format="WAV")
    return path


# --- readers ------------------------------------------------------------------------------------------------


def is_audio_file(path: Path) -> bool:
    """Whether a file is taken as audio by its (lowercased) suffix; hidden files never are."""
    return path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".")


def _audio_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(audio files, other files) under `folder`, recursively, sorted; hidden files and folders are left out, and
    one this user may not read is an error."""
    return labelled_files.visible_files(folder, is_audio_file, AudioDataError)


def _labelled(records: list[AudioRecord], where: Path | str) -> LabelledAudio:
    """Check labelled records (every one labelled, at least two classes, a consistent split) and wrap them."""
    if not records:
        raise AudioDataError(f"{where}: no audio files found (looked for {', '.join(AUDIO_SUFFIXES)})")
    unlabelled = next((record for record in records if record.label is None), None)
    if unlabelled is not None:
        raise AudioDataError(f"{unlabelled.source}: no label; every clip needs one for classification")
    classes = labelled_files.numeric_aware([str(record.label) for record in records])
    if len(classes) < 2:
        raise AudioDataError(f"{where}: found 1 class ({some(classes)}); classification needs at least 2 classes")
    return LabelledAudio(records, classes, labelled_files.record_splits(records, where, AudioDataError, "clips"))


def name_label(path: Path) -> str:
    """The label of an FSDD-style file name `{label}_{speaker}_{index}.wav`: the name's first `_` field; a name
    without `_` is an error naming the file."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    label, sep, rest = stem.partition("_")
    if not sep or not label or not rest:
        raise AudioDataError(
            f"{path}: cannot take a label from this file name; name files {{label}}_{{anything}}.wav "
            f"(e.g. 7_jackson_32.wav) or put each class's files in a subfolder named after the class"
        )
    return label


def read_audio_folder(root: str | Path) -> LabelledAudio:
    """Labelled clips of a folder: `root/<class>/**/<audio>` (a class is a subfolder's name; `root/train/<class>`,
    `root/val/<class>`, `root/test/<class>` keep the user's split), or a flat folder of FSDD-style files named
    `{label}_{...}.wav` (the label is the name's first field). Hidden files are ignored; files whose suffix is
    not audio are skipped with one warning."""
    root = Path(root)
    labelled_files.existing_paths(root, AudioDataError)
    if not root.is_dir():
        raise AudioDataError(f"{root}: not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_folders = {SPLIT_NAMES[p.name.lower()]: p for p in folders if p.name.lower() in SPLIT_NAMES}
    if split_folders and len(split_folders) == len(folders):
        records: list[AudioRecord] = []
        for split, folder in split_folders.items():
            records += _class_records(folder, split)
        return _labelled(records, root)
    if folders:
        return _labelled(_class_records(root, None), root)
    audio, others = _audio_files(root)
    labelled_files.warn_skipped(root, others, "audio")
    return _labelled([AudioRecord(path, name_label(path), str(path)) for path in audio], root)


def _class_records(root: Path, split: str | None) -> list[AudioRecord]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise AudioDataError(f"{root}: no class subfolders; put each class's clips in a subfolder named after it")
    records: list[AudioRecord] = []
    skipped = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    for folder in folders:
        audio, others = _audio_files(folder)
        skipped += others
        if not audio:
            raise AudioDataError(f"{folder}: class folder holds no audio files; add clips or remove the folder")
        records += [AudioRecord(path, folder.name, str(path), split) for path in audio]
    labelled_files.warn_skipped(root, skipped, "audio")
    return records


def read_audio_table(path: str | Path, require_label: bool = True) -> list[AudioRecord]:
    """Records of a CSV or TSV file whose header names an audio path column (`path`, or audio, audio_path, file,
    filename, filepath), a `label` (or `class`) column (optional when `require_label` is false) and optionally a
    `split` column (train, val/valid/validation/dev, test). Relative paths are relative to the table's folder;
    every listed file must exist (it is decoded later)."""
    rows = read_label_table(Path(path), PATH_COLUMNS, "audio", AudioDataError, require_label)
    return [AudioRecord(row.file, row.label, row.source, row.split) for row in rows]


#: How the core's `datasets` dump reader finds and names audio.
AUDIO_DUMP = hf_dumps.DumpKind("Audio", HF_AUDIO_COLUMNS, "audio", AudioDataError, AUDIO_EXTRA)


def read_hf_audio(path: str | Path, require_label: bool = True) -> tuple[list[AudioRecord], list[str] | None]:
    """(records, ClassLabel names or None) of a Hugging Face `datasets` dump (`mambakit.hf_dumps.read_dump`):
    one `.parquet` file or a folder of them, or a `save_to_disk` folder of `.arrow` files. The audio column is
    the feature typed `Audio` (else `audio`): encoded bytes or paths, decoded when used. Needs pyarrow
    (`mambakit[audio]`)."""
    path = Path(path)
    labelled_files.existing_paths(path, AudioDataError)
    rows, class_names = hf_dumps.read_dump(path, AUDIO_DUMP, require_label)
    return [AudioRecord(row.media, row.label, row.source, row.split) for row in rows], class_names


def read_hf_audio_dataset(path: str | Path) -> LabelledAudio:
    """Labelled clips of a `datasets` dump (see `read_hf_audio`); classes are the ClassLabel names when the
    metadata has them, else the sorted labels (integers in numeric order)."""
    records, names = read_hf_audio(path, require_label=True)
    labelled = _labelled(records, path)
    if names is not None:
        missing = sorted(set(labelled.classes) - set(names))
        if missing:
            raise AudioDataError(f"{path}: labels {some(missing)} are not among the ClassLabel names")
        labelled.classes = list(names)
    return labelled


def _audiofolder_metadata(folder: Path) -> Path | None:
    """The metadata table of a Hugging Face audiofolder (`metadata.csv` beside the clips, a `file_name` column)."""
    table = folder / "metadata.csv"
    return table if table.is_file() else None


def load_labelled_audio(data: str | Path | Sequence[str | Path]) -> LabelledAudio:
    """Labelled clips from what a user passes as --data:

    - a folder with class subfolders (optionally inside train/val/test folders), or a flat folder of FSDD-style
      `{label}_{...}.wav` files (`read_audio_folder`);
    - a CSV/TSV file of path,label[,split] rows (`read_audio_table`);
    - a Hugging Face audiofolder (clips beside a `metadata.csv` with `file_name` and `label` columns);
    - a Hugging Face `datasets` dump: a .parquet file, or a folder of .parquet or .arrow files (`read_hf_audio`);
    - several folders, one per class (the class is the folder's name).
    """
    paths = labelled_files.existing_paths(data, AudioDataError)
    if not paths:
        raise AudioDataError("no data given; pass an audio folder or a CSV/TSV of path,label rows")
    if len(paths) > 1:
        file = next((p for p in paths if not p.is_dir()), None)
        if file is not None:
            raise AudioDataError(f"{file}: with several --data paths, each must be one class's folder of audio")
        records: list[AudioRecord] = []
        for folder in paths:
            audio, others = _audio_files(folder)
            labelled_files.warn_skipped(folder, others, "audio")
            records += [AudioRecord(p, folder.name, str(p)) for p in audio]
        return _labelled(records, paths[0].parent)
    path = paths[0]
    if path.is_dir():
        if hf_dumps.is_dump_folder(path):
            return read_hf_audio_dataset(path)
        metadata = _audiofolder_metadata(path)
        return _labelled(read_audio_table(metadata), metadata) if metadata else read_audio_folder(path)
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return _labelled(read_audio_table(path), path)
    if suffix in HF_SUFFIXES:
        return read_hf_audio_dataset(path)
    if suffix in AUDIO_SUFFIXES:
        raise AudioDataError(
            f"{path}: one audio file holds no labels; give a folder of clips (class subfolders or "
            f"{{label}}_....wav names) or a CSV/TSV of path,label rows"
        )
    raise AudioDataError(
        f"{path}: unknown data file type {suffix or '(no suffix)'!r}; give an audio folder, a .csv/.tsv of "
        f"path,label rows or a .parquet file"
    )


def read_audio_inputs(data: str | Path | Sequence[str | Path]) -> list[AudioRecord]:
    """Clips to predict on, labels kept where the input has them: audio files; folders (every audio file under
    them, recursively, sorted; others skipped with a warning); CSV/TSV tables and `datasets` dumps (the label
    column optional)."""
    records: list[AudioRecord] = []
    for path in labelled_files.existing_paths(data, AudioDataError):
        if (path.is_dir() and hf_dumps.is_dump_folder(path)) or path.suffix.lower() in HF_SUFFIXES:
            records += read_hf_audio(path, require_label=False)[0]
        elif path.is_dir():
            audio, others = _audio_files(path)
            labelled_files.warn_skipped(path, others, "audio")
            if not audio:
                raise AudioDataError(f"{path}: no audio files in this folder (looked for {', '.join(AUDIO_SUFFIXES)})")
            records += [AudioRecord(p, None, str(p)) for p in audio]
        elif path.suffix.lower() in TABLE_SUFFIXES:
            records += read_audio_table(path, require_label=False)
        else:  # any other file is taken as audio; it is decoded (and checked) when used
            records.append(AudioRecord(path, None, str(path)))
    if not records:
        raise AudioDataError("no audio given")
    return records


def encode_labels(records: Sequence[AudioRecord], classes: Sequence[str]) -> np.ndarray:
    """Class ids (int64) of the records' labels; a missing label or one outside `classes` (e.g. at predict or eval
    time, with a model trained on other classes) is an error naming the record's file (and row)."""
    return labelled_files.encode_labels(records, classes, AudioDataError, "clips")


#: Train/val/test record indices of labelled data (`mambakit.labelled_files.split_labelled`).
split_indices = labelled_files.split_labelled


# --- the embedded data --------------------------------------------------------------------------------------


def embedded_dataset(seed: int = 0, val_per_class: int = 30) -> LabelledAudio:
    """The embedded Free Spoken Digit Dataset (data/README.md): all 3,000 recordings (6 speakers x 10 digits x 50),
    8 kHz, as records holding their 8-bit mu-law codes (`MU_LAW_VARIANT`) in memory; classes "0".."9".

    Splits: "test" = recordings with index 0-4 (FSDD's own convention, 300 clips); "val" = `val_per_class`
    recordings of each digit drawn (with `seed`) from the others; "train" = the rest (2,400 by default)."""
    arrays = labelled_files.load_embedded_arrays(EMBEDDED_FILE, AudioDataError, "audio")
    codes, offsets = arrays["codes"], arrays["offsets"]
    digits, speakers, index = arrays["digit"], arrays["speaker"], arrays["index"]
    names = [str(name) for name in arrays["speaker_names"]]
    rate = int(arrays["sample_rate"])
    rng = np.random.default_rng(seed)
    val: set[int] = set()
    for digit in range(10):
        pool = np.flatnonzero((digits == digit) & (index >= 5))
        val.update(rng.choice(pool, size=min(val_per_class, len(pool)), replace=False).tolist())
    records: list[AudioRecord] = []
    for i in range(len(digits)):
        split = "test" if index[i] < 5 else ("val" if i in val else "train")
        name = f"{digits[i]}_{names[speakers[i]]}_{index[i]}.wav"
        clip = codes[offsets[i] : offsets[i + 1]]
        records.append(AudioRecord(clip, str(digits[i]), f"{EMBEDDED_FILE.name} ({name})", split, rate, "mu-law"))
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, record in enumerate(records):
        splits[str(record.split)].append(i)
    return LabelledAudio(records, [str(d) for d in range(10)], splits)


# --- torch datasets -----------------------------------------------------------------------------------------


def load_codes(record: AudioRecord, sample_rate: int, encoding: str = "mu-law") -> np.ndarray:
    """int64 8-bit codes of a record at `sample_rate` in `encoding`: in-memory codes are used as they are when
    they match, else decoded, resampled and re-encoded; a file (path or bytes) is read (`read_audio`) and encoded."""
    _check_encoding(encoding)
    if isinstance(record.audio, np.ndarray):
        if record.encoding == encoding and record.sample_rate == sample_rate:
            return record.audio.astype(np.int64)
        samples = np.asarray(decode(record.audio, record.encoding or "mu-law"))
        samples = resample(samples, record.sample_rate or sample_rate, sample_rate)
    else:
        samples = read_audio(record.audio, sample_rate, record.source)
    return np.asarray(encode(samples, encoding)).astype(np.int64)


def _fit(codes: np.ndarray, length: int, start: int, pad: int) -> tuple[torch.Tensor, int]:
    """(codes[start : start + length] right-padded with `pad` to `length`, number of real samples)."""
    window = codes[start : start + length]
    out = torch.full((length,), pad, dtype=torch.long)
    out[: len(window)] = torch.from_numpy(np.ascontiguousarray(window, dtype=np.int64))
    return out, len(window)


class AudioLMDataset(Dataset):
    """Fixed-length windows of 8-bit codes for raw-waveform language modelling:
    {"input_ids": int64 (crop_length,), "labels": the same ids with padded positions IGNORE_INDEX, and "class_ids":
    int64 scalar when `class_names` is given}. The labels are not shifted (the LM head shifts them).

    Each clip is preceded by one sample of silence, context that is not scored: a window from the clip's start
    learns its first sample as generation sees it (which starts from silence), and NLL over such windows counts
    every sample of the clip (the protocol of the baselines in bench/audio.py). A clip longer than `crop_length`
    gives a window starting at a position drawn from torch's global RNG (the trainer seeds it) when `random_crop`,
    else its start; a shorter one is right-padded with the code of silence.
    """

    def __init__(
        self,
        records: Sequence[AudioRecord],
        crop_length: int,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        encoding: str = "mu-law",
        class_names: Sequence[str] | None = None,
        random_crop: bool = True,
    ) -> None:
        if crop_length < 1:
            raise UserError(f"crop length must be at least 1 sample, got {crop_length}")
        _check_encoding(encoding)
        self.records = list(records)
        self.crop_length = int(crop_length)
        self.sample_rate = int(sample_rate)
        self.encoding = encoding
        self.random_crop = random_crop
        self.class_names = list(class_names) if class_names is not None else None
        self.class_ids = encode_labels(self.records, self.class_names) if self.class_names is not None else None
        self.pad_code = silence_code(encoding)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        codes = np.concatenate([[self.pad_code], load_codes(self.records[index], self.sample_rate, self.encoding)])
        spare = len(codes) - self.crop_length
        start = int(torch.randint(0, spare + 1, ()).item()) if self.random_crop and spare > 0 else 0
        input_ids, real = _fit(codes, self.crop_length, start, self.pad_code)
        labels = input_ids.clone()
        labels[real:] = IGNORE_INDEX
        if start == 0:
            labels[0] = IGNORE_INDEX  # the silence before the clip is context, not a sample of it
        item = {"input_ids": input_ids, "labels": labels}
        if self.class_ids is not None:
            item["class_ids"] = torch.tensor(self.class_ids[index], dtype=torch.long)
        return item


class AudioClassificationDataset(Dataset):
    """Clips for classification: {"input_ids": int64 (crop_length,) codes, "attention_mask": int64 (crop_length,)
    with 0 on padding, and "labels": int64 scalar class id unless `class_names` is None (unlabelled input, at
    predict time)}. A longer clip gives its centred window, a shorter one is right-padded with the code of silence.
    A label outside `class_names` is an error naming the record."""

    def __init__(
        self,
        records: Sequence[AudioRecord],
        class_names: Sequence[str] | None,
        crop_length: int,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        encoding: str = "mu-law",
    ) -> None:
        if crop_length < 1:
            raise UserError(f"crop length must be at least 1 sample, got {crop_length}")
        _check_encoding(encoding)
        self.records = list(records)
        self.class_names = None if class_names is None else list(class_names)
        self.crop_length = int(crop_length)
        self.sample_rate = int(sample_rate)
        self.encoding = encoding
        self.labels = None if self.class_names is None else encode_labels(self.records, self.class_names)
        self.pad_code = silence_code(encoding)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        codes = load_codes(self.records[index], self.sample_rate, self.encoding)
        start = max(0, (len(codes) - self.crop_length) // 2)
        input_ids, real = _fit(codes, self.crop_length, start, self.pad_code)
        mask = torch.zeros(self.crop_length, dtype=torch.long)
        mask[:real] = 1
        item = {"input_ids": input_ids, "attention_mask": mask}
        if self.labels is not None:
            item["labels"] = torch.tensor(self.labels[index])
        return item
