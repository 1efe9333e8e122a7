"""The apps' bad inputs and missing optional extras (#15 part D): each is one line naming the file, option or extra
and what to do, exit code 2, nothing written; and inputs that used to be mishandled silently (duplicate contigs,
"1" beside "1.0", an eval file scored in part, an uncapped evaluation or prediction) are handled."""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mambakit.apps.genomics.cli import DOMAIN as GENOMICS
from mambakit.apps.genomics.cli import GenomicsOptions
from mambakit.apps.genomics.datasets import GenomeWindows, SequenceDataset
from mambakit.apps.genomics.models import create_model, genomics_config
from mambakit.apps.genomics.predict import embed, predict_logits
from mambakit.apps.genomics.prepare import DEFAULT_EVAL_WINDOWS, pretraining_splits
from mambakit.apps.genomics.readers import GenomicsDataError, IndexedFasta, Region, SequenceRecord, load_labelled
from mambakit.apps.genomics.tokenizer import DNATokenizer

from mambakit import labelled_files
from mambakit.cli import main
from mambakit.domains import Domain, MissingExtraError, Requirement, RunOptions, RunRecord, TaskInputs
from mambakit.errors import UserError
from mambakit.models import MambaConfig, MambaLMHeadModel, save_pretrained

#: Reading FASTA goes through biopython; the tests of a missing extra need none.
needs_biopython = pytest.mark.skipif(
    importlib.util.find_spec("Bio") is None, reason="the genomics app reads files through biopython"
)
TOKENIZER = DNATokenizer()


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *fragments: str) -> str:
    """The CLI's error line, after checking it is exactly one line with exit code 2 and holds every fragment."""
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("mambakit: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained genomics classifier checkpoint (classes a, b), saved as `train genomics` saves one."""
    folder = tmp_path_factory.mktemp("genomics") / "checkpoint"
    torch.manual_seed(0)
    model = create_model("classify", genomics_config(TOKENIZER, d_model=8, n_layer=1, d_state=2), labels=("a", "b"))
    files = {"run_record.json": RunRecord("genomics", "classify").to_json(), "tokenizer.json": TOKENIZER.to_json()}
    return save_pretrained(model, folder, extra_files=files)


# --- 1. missing optional extras -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["train", "genomics", "--max-steps", "1"],
        ["train", "genomics", "--task", "pretrain", "--max-steps", "1"],
        ["predict", "genomics", "-c", "x", "--data", "y.fa"],
        ["eval", "genomics", "-c", "x"],
    ],
)
def test_genomics_without_biopython_names_the_extra(args, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "Bio", None)
    monkeypatch.chdir(tmp_path)
    message = one_line_error(
        capsys, main(args), "the genomics domain needs Biopython: pip install 'mambakit[genomics]'"
    )
    assert "Traceback" not in message and list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a fresh interpreter; test_genomics_without_biopython_names_the_extra checks the line in-process
def test_a_missing_extra_is_one_line_from_the_console_script_too(tmp_path):
    blocked = "import sys; sys.modules['Bio'] = None; from mambakit.cli import run; run()"
    result = subprocess.run(
        [sys.executable, "-c", blocked, "train", "genomics"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mambakit: error: the genomics domain needs Biopython: pip install 'mambakit[genomics]'"
    ]


def test_help_works_without_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "Bio", None)
    assert main(["train", "genomics", "--help"]) == 0
    assert "--seq-len" in capsys.readouterr().out


def test_vision_without_torchvision_names_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    one_line_error(
        capsys, main(["train", "vision"]), "the vision domain needs torchvision: pip install 'mambakit[vision]'"
    )


@needs_biopython
def test_parquet_embeddings_without_pyarrow_fail_before_any_work(classifier, monkeypatch, capsys, tmp_path):
    fasta = tmp_path / "reads.fa"
    fasta.write_text(">a\nACGTACGT\n")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    out = tmp_path / "embeddings.parquet"
    code = main(["predict", "genomics", "-c", str(classifier), "--data", str(fasta), "--embed", "--out", str(out)])
    one_line_error(capsys, code, f"--out {out}: writing Parquet needs pyarrow: pip install 'mambakit[genomics]'")
    assert not out.exists()


def test_audio_generate_without_soundfile_fails_before_generating(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "soundfile", None)
    code = main(["generate", "audio", "--n", "1", "--seconds", "0.01", "--out", str(tmp_path / "wav")])
    one_line_error(capsys, code, "generate audio (it writes WAV files) needs soundfile: pip install 'mambakit[audio]'")
    assert not (tmp_path / "wav").exists()


def test_text_parquet_without_pyarrow(monkeypatch, capsys, tmp_path):
    data = tmp_path / "docs.parquet"
    data.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    code = main(["train", "text", "--data", str(data), "--out", str(tmp_path / "run")])
    one_line_error(capsys, code, f"{data}: reading Parquet needs pyarrow: pip install 'mambakit[text]'")


def test_info_tells_each_domain_usable_or_which_extra_to_install(monkeypatch, capsys):
    import mambakit.cli

    monkeypatch.setattr(mambakit.cli, "_print_nvrtc", lambda console: None)  # NVRTC is not what this checks
    monkeypatch.setenv("COLUMNS", "400")  # one table row per domain
    monkeypatch.setitem(sys.modules, "Bio", None)
    monkeypatch.setitem(sys.modules, "soundfile", None)
    assert main(["info"]) == 0
    rows = {line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.count("│") > 3}
    assert "not usable" in rows["genomics"]
    assert "every command needs Biopython: pip install 'mambakit[genomics]'" in rows["genomics"]
    assert "│ usable" in rows["audio"] and "needs soundfile: pip install 'mambakit[audio]'" in rows["audio"]
    assert "│ usable" in rows["synthetic"] and "│ none" in rows["synthetic"]


def test_a_broken_package_is_told_apart_from_a_missing_one(tmp_path, monkeypatch):
    (tmp_path / "brokenpkg.py").write_text("raise ImportError('undefined symbol: _ZN3abi')\n")
    (tmp_path / "needsmissing.py").write_text("import missingdep_of_test\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtraError, match=r"writing X needs Broken, which is installed but fails to import "):
        Requirement("brokenpkg", "Broken", "toy").load("writing X")
    domain = Domain(
        name="toy",
        help="",
        requires=(Requirement("missingdep_of_test", "Dep", "toy"), Requirement("needsmissing", "Top", "toy")),
    )
    # "needsmissing" fails only because "missingdep_of_test" is absent: that one is what to install.
    assert [requirement.package for requirement, _ in domain.unmet_requirements()] == ["Dep"]
    with pytest.raises(MissingExtraError, match=r"^the toy domain needs Dep: pip install 'mambakit\[toy\]'$"):
        domain.check_requirements()


def test_a_command_imports_only_what_every_command_of_its_domain_needs(tmp_path, monkeypatch):
    # A feature's package (LoRA's peft pulls in transformers: seconds) is imported when the feature is used, not
    # to check the requirements of every command.
    (tmp_path / "feature_only_pkg.py").write_text("import sys\nsys.modules['feature_only_pkg_was_imported'] = sys\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    domain = Domain(name="toy", help="", requires=(Requirement("feature_only_pkg", "F", "toy", needed_for="a flag"),))
    domain.check_requirements()
    assert "feature_only_pkg_was_imported" not in sys.modules
    # `mambakit VERB DOMAIN` loads that domain's app alone: a text command does not import timm (the vision app's).
    code = (
        "import sys\nfrom mambakit.cli import main\n"
        "assert main(['train', 'text', '--data', 'missing.txt']) == 2\n"
        "print(sorted({'timm', 'peft'} & set(sys.modules)))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert shown.stdout.strip() == "[]", shown.stderr


# --- 2. duplicate contig names --------------------------------------------------------------------------------


DUPLICATED = ">chr1 first\nACGTACGTAC\n>chr2\nACGTTT\n>empty\n>chr1 again\nGGGGCCCC\n"


@needs_biopython
def test_a_repeated_contig_name_is_an_error_naming_both_records(tmp_path, capsys):
    genome = tmp_path / "genome.fa"
    genome.write_text(DUPLICATED)
    expected = f"{genome}: contig name 'chr1' is used by records 1 and 4; contig names must be unique"
    with pytest.raises(GenomicsDataError, match="^" + re.escape(expected)):
        pretraining_splits(genome, window=4)
    code = main(["train", "genomics", "--task", "pretrain", "--data", str(genome), "--out", str(tmp_path / "run")])
    one_line_error(capsys, code, expected)
    assert not (tmp_path / "run").exists()
    packed = tmp_path / "genome.fa.gz"  # plain gzip: indexed by reading it whole
    packed.write_bytes(gzip.compress(DUPLICATED.encode()))
    with pytest.raises(GenomicsDataError, match="'chr1' is used by records 1 and 4"):
        IndexedFasta(packed)


# --- 3. one label spelled two ways ----------------------------------------------------------------------------


@needs_biopython
def test_numeric_labels_spelled_two_ways_are_refused_not_merged(tmp_path, capsys):
    table = tmp_path / "labels.csv"
    table.write_text("sequence,label\nACGT,1\nACGA,0\nACGG,1.0\n")
    expected = f"{table}: labels '1' (line 2) and '1.0' (line 4) are one number written two ways"
    with pytest.raises(GenomicsDataError, match="^" + re.escape(expected)):
        load_labelled(table)
    code = main(["train", "genomics", "--data", str(table), "--out", str(tmp_path / "run")])
    assert "write the label one way" in one_line_error(capsys, code, expected)
    for image in ("a.png", "b.png", "c.png"):
        (tmp_path / image).write_bytes(b"")
    images = tmp_path / "images.csv"
    images.write_text("path,label\na.png,01\nb.png,2\nc.png,1\n")
    with pytest.raises(UserError, match=r"images.csv: labels '01' \(line 2\) and '1' \(line 4\) are one number"):
        labelled_files.read_label_table(images, ("path",), "image", UserError)
    images.write_text("path,label\na.png,cat\nb.png,Cat\nc.png,nan\n")  # only numbers are compared
    assert [row.label for row in labelled_files.read_label_table(images, ("path",), "image", UserError)] == [
        "cat",
        "Cat",
        "nan",
    ]


# --- 4. eval text scores a given file whole -------------------------------------------------------------------


def test_eval_text_scores_the_given_file_whole(tmp_path):
    from mambakit.apps.text.cli import DOMAIN as TEXT
    from mambakit.apps.text.cli import TextOptions
    from mambakit.apps.text.tokenizer import ByteTokenizer

    text = tmp_path / "eval.txt"
    text.write_text("the cat sat on the mat\n" * 20)  # one document: training would hold out only its last tenth
    inputs = TaskInputs(RunOptions(data=[text]), TextOptions(seq_len=16), ByteTokenizer())
    windows = TEXT.task("lm").evaluation_data(inputs)
    tokens = text.stat().st_size + 1  # every byte and the end-of-text token
    assert len(windows.tokens) == tokens and len(windows) == tokens // 16


# --- 5. capped pretraining evaluation, bounded prediction -----------------------------------------------------


@needs_biopython
def test_evaluation_windows_are_capped_evenly_and_deterministically(tmp_path):
    contigs = {"c": np.arange(100, dtype=np.uint8) % 4 + 7}
    every = GenomeWindows(contigs, [Region("c", 0, 100)], window=10)
    capped = GenomeWindows(contigs, [Region("c", 0, 100)], window=10, max_windows=4)
    assert [start for _, start, _ in capped.spans] == [0, 30, 60, 90] and len(every) == 10
    genome = tmp_path / "genome.fa"
    genome.write_text(">c1\n" + "ACGT" * 200 + "\n>c2\n" + "GGCA" * 200 + "\n")
    splits = pretraining_splits(genome, window=4, eval_windows=3)
    assert (len(splits.val), len(splits.test)) == (3, 3) and len(splits.train) > 100
    assert splits.val.spans == pretraining_splits(genome, window=4, eval_windows=3).val.spans
    assert len(pretraining_splits(genome, window=4, eval_windows=None).val) > 3
    # --eval-windows (a config key too) reaches the splits; eval may raise it for a recorded run.
    options = GenomicsOptions(seq_len=4, eval_windows=5)
    inputs = TaskInputs(RunOptions(data=[genome], task="pretrain"), options, TOKENIZER)
    assert len(GENOMICS.task("pretrain").data(inputs).val) == 5
    assert GenomicsOptions().eval_windows == DEFAULT_EVAL_WINDOWS
    assert any(
        field.name == "eval_windows" and field.metadata.get("eval")
        for field in GENOMICS.options.__dataclass_fields__.values()
    )


@needs_biopython
def test_predict_refuses_a_sequence_past_max_length(classifier, tmp_path, capsys):
    fasta = tmp_path / "chromosome.fa"
    fasta.write_text(">short\nACGT\n>chrom\n" + "ACGT" * 10 + "\n")
    out = tmp_path / "predictions.csv"
    code = main(
        ["predict", "genomics", "-c", str(classifier), "--data", str(fasta), "--out", str(out), "--max-length", "20"]
    )
    one_line_error(capsys, code, f"{fasta} (record chrom): 40 bases, more than --max-length 20", "raise --max-length")
    assert not out.exists()
    assert main(["predict", "genomics", "-c", str(classifier), "--data", str(fasta), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3


def test_prediction_batches_hold_at_most_max_tokens_padded_bases(classifier):
    from mambakit.models import load_model

    model = load_model(classifier).eval()
    records = [
        SequenceRecord(f"s{i}", bases) for i, bases in enumerate(["ACGT" * 3, "AC", "ACGTACGTAC", "A" * 20, "CG"])
    ]
    dataset = SequenceDataset(records, TOKENIZER, None)
    shapes: list[tuple[int, ...]] = []
    handle = model.backbone.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    budgeted = predict_logits(model, dataset, batch_size=4, max_tokens=24)
    handle.remove()
    assert shapes == [(2, 12), (1, 10), (1, 20), (1, 2)]
    assert np.allclose(budgeted, predict_logits(model, dataset, batch_size=4), atol=1e-5)
    assert embed(model, dataset, batch_size=4, max_tokens=24).shape == (5, 8)


# --- 6. outputs over sources, folders as files, unreadable data -----------------------------------------------


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_pretrained(MambaLMHeadModel(MambaConfig(d_model=8, n_layer=1, vocab_size=16)), tmp_path / "ck")


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {file.name: (file.read_bytes(), file.stat().st_mtime_ns) for file in folder.iterdir()}


@pytest.mark.parametrize("spelling", ["ck", "ck/", "{tmp}/ck", "./ck", "sub/../ck", "link", "link/"])
def test_convert_refuses_every_spelling_of_its_source(spelling, checkpoint, tmp_path, monkeypatch, capsys):
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(checkpoint)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(checkpoint)
    out = spelling.format(tmp=tmp_path)
    code = main(["convert", "ck", "--out", out, "--dtype", "float16"])
    one_line_error(capsys, code, "is the source folder; write the converted checkpoint to another folder")
    assert _snapshot(checkpoint) == before


def test_convert_to_an_existing_file_is_refused(checkpoint, tmp_path, capsys):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"keep me")
    code = main(["convert", str(checkpoint), "--out", str(target)])
    one_line_error(capsys, code, f"--out {target}: is a file; a checkpoint is a folder")
    assert target.read_bytes() == b"keep me"


@pytest.mark.parametrize("domain", ["genomics", "vision", "audio"])
def test_predict_out_that_is_a_folder_is_refused_first(domain, tmp_path, capsys):
    needed = {"genomics": "Bio", "vision": "timm", "audio": "torch"}[domain]
    if importlib.util.find_spec(needed) is None:
        pytest.skip(f"the {domain} domain needs {needed}")
    folder = tmp_path / "results"
    folder.mkdir()
    code = main(["predict", domain, "-c", str(tmp_path / "none"), "--data", str(tmp_path / "x"), "--out", str(folder)])
    one_line_error(
        capsys, code, f"--out {folder}: is a folder", f"give a file path such as {folder / 'predictions.csv'}"
    )
    assert list(folder.iterdir()) == []


def _unreadable(path: Path) -> Path:
    path.chmod(0)
    try:
        path.read_bytes() if path.is_file() else list(path.iterdir())
    except PermissionError:
        return path
    pytest.skip("this user reads files whatever their permissions (root)")


@needs_biopython
def test_unreadable_files_inside_data_folders_are_named(tmp_path, capsys):
    from mambakit.apps.audio.data import AudioDataError, read_audio_folder
    from mambakit.apps.text.data import expand_paths

    genomics = tmp_path / "dna"
    genomics.mkdir()
    (genomics / "oct4.fa").write_text(">s\nACGT\n")
    (genomics / "mafk.fa").write_text(">s\nGGCC\n")
    locked = _unreadable(genomics / "mafk.fa")
    advice = "cannot read this file (permission denied); allow it (chmod a+r) or move it out"
    with pytest.raises(GenomicsDataError, match=re.escape(f"{locked}: {advice}")):
        load_labelled(genomics)
    one_line_error(capsys, main(["train", "genomics", "--data", str(genomics)]), f"{locked}: {advice}")
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("hello")
    (text / "b.txt").write_text("world")
    with pytest.raises(UserError, match=re.escape(f"{text / 'b.txt'}: {advice}")):
        expand_paths([_unreadable(text / "b.txt").parent])
    audio = tmp_path / "audio"
    (audio / "yes").mkdir(parents=True)
    (audio / "no" / "deeper").mkdir(parents=True)
    for clip in (audio / "yes" / "1.wav", audio / "no" / "2.wav", audio / "no" / "deeper" / "3.wav"):
        clip.write_bytes(b"RIFF")
    hidden = _unreadable(audio / "no" / "deeper")
    with pytest.raises(AudioDataError, match=re.escape(f"{hidden}: cannot list this folder")):
        read_audio_folder(audio)
    hidden.chmod(0o755)
    with pytest.raises(AudioDataError, match=re.escape(f"{audio / 'yes' / '1.wav'}: {advice}")):
        read_audio_folder(_unreadable(audio / "yes" / "1.wav").parent.parent)


def test_unreadable_files_are_found_in_listings_of_readable_ones(tmp_path):
    images = tmp_path / "images"
    (images / ".hidden").mkdir(parents=True)
    (images / "a.png").write_bytes(b"")
    (images / "notes.txt").write_bytes(b"")
    kept, others = labelled_files.visible_files(images, lambda path: path.suffix == ".png", UserError)
    assert (kept, others) == ([images / "a.png"], [images / "notes.txt"])
