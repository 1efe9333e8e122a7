"""mambakit.predictions: the predictions CSV of every app's `predict` command. Names holding commas, quotes,
newlines or non-ASCII text keep their columns (RFC 4180 quoting) and read back identically through our reader,
Python's csv module and pandas; probabilities keep 6 decimals; bad calls are one-line errors that write
nothing; a failed write leaves the old file in place."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from mambakit import predictions as predictions_module
from mambakit.predictions import read_predictions_csv, write_predictions_csv

NAMES = ["chr1:100-200,+", 'say "hi"', "two\nlines", "ünïcødé-序列-🧬", " padded ", "plain"]
CLASSES = ["mafk", "oct4", "a,b"]
PROBABILITIES = np.array(
    [
        [0.1234564, 0.8765436, 0.0],
        [1 / 3, 1 / 3, 1 / 3],
        [0.0000004, 0.9999996, 0.0],
        [0.5, 0.25, 0.25],
        [1.0, 0.0, 0.0],
        [0.2, 0.3, 0.5],
    ]
)


def _write(path, **overrides):
    arguments = {
        "names": NAMES,
        "predictions": PROBABILITIES.argmax(axis=1),
        "probabilities": PROBABILITIES,
        "class_names": CLASSES,
    }
    arguments.update(overrides)
    return write_predictions_csv(path, **arguments)


def test_awkward_names_round_trip_with_their_columns_intact(tmp_path):
    out = _write(tmp_path / "nested" / "dir" / "predictions.csv")  # the parent folders are created
    assert out == tmp_path / "nested" / "dir" / "predictions.csv"
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == 'name,prediction,p_mafk,p_oct4,"p_a,b"'
    assert '"chr1:100-200,+"' in text and '"say ""hi"""' in text and '"two\nlines"' in text
    read = read_predictions_csv(out)
    assert read.names == NAMES
    assert read.predictions == ["oct4", "mafk", "oct4", "mafk", "mafk", "a,b"]
    assert read.class_names == CLASSES
    assert read.probabilities.shape == (6, 3)
    np.testing.assert_allclose(read.probabilities, PROBABILITIES.round(6), rtol=0, atol=1e-12)


def test_probabilities_have_exactly_six_decimals(tmp_path):
    out = _write(tmp_path / "p.csv")
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert rows[1][2:] == ["0.123456", "0.876544", "0.000000"]
    assert rows[2][2:] == ["0.333333"] * 3
    assert rows[3][2:] == ["0.000000", "1.000000", "0.000000"]
    assert all(len(field.split(".")[1]) == 6 for row in rows[1:] for field in row[2:])


def test_python_csv_module_reads_every_row_with_the_header_width(tmp_path):
    out = _write(tmp_path / "p.csv")
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == NAMES
    assert rows[5]["prediction"] == "a,b" and rows[5]["p_a,b"] == "0.500000"
    assert all(len(row) == 5 and None not in row for row in rows)  # no row spills into extra columns


def test_pandas_reads_the_file_identically(tmp_path):
    pandas = pytest.importorskip("pandas")
    out = _write(tmp_path / "p.csv")
    frame = pandas.read_csv(out, keep_default_na=False, dtype={"name": str, "prediction": str})
    assert list(frame.columns) == ["name", "prediction", "p_mafk", "p_oct4", "p_a,b"]
    assert frame["name"].tolist() == NAMES
    assert frame["prediction"].tolist()[-1] == "a,b"
    np.testing.assert_allclose(frame[["p_mafk", "p_oct4", "p_a,b"]].to_numpy(), PROBABILITIES.round(6), atol=1e-12)


def test_simple_output_is_byte_for_byte_the_old_format(tmp_path):
    out = write_predictions_csv(
        tmp_path / "p.csv", ["a", "b"], ["oct4", "mafk"], [[0.25, 0.75], [0.9, 0.1]], ["mafk", "oct4"]
    )
    assert out.read_bytes() == b"name,prediction,p_mafk,p_oct4\na,oct4,0.250000,0.750000\nb,mafk,0.900000,0.100000\n"


def test_prediction_forms_labels_indices_and_argmax(tmp_path):
    by_argmax = write_predictions_csv(
        tmp_path / "argmax.csv", ["x", "y"], None, [[0.1, 0.9], [0.7, 0.3]], ["neg", "pos"]
    )
    assert read_predictions_csv(by_argmax).predictions == ["pos", "neg"]
    indices_only = write_predictions_csv(tmp_path / "indices.csv", ["x", "y"], np.array([2, 0]))
    read = read_predictions_csv(indices_only)
    assert read.predictions == ["2", "0"] and read.class_names == [] and read.probabilities is None
    assert indices_only.read_text() == "name,prediction\nx,2\ny,0\n"
    unnamed = write_predictions_csv(tmp_path / "unnamed.csv", ["x"], None, [[0.2, 0.8]])
    assert unnamed.read_text().splitlines() == ["name,prediction,p_0,p_1", "x,1,0.200000,0.800000"]
    empty = write_predictions_csv(tmp_path / "empty.csv", [], [], np.zeros((0, 2)), ["a", "b"])
    assert empty.read_text() == "name,prediction,p_a,p_b\n"
    assert read_predictions_csv(empty).probabilities.shape == (0, 2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"names": NAMES[:-1]}, "probabilities has 6 row(s) but there are 5 name(s)"),
        ({"names": NAMES[:-1], "probabilities": None}, "6 prediction(s) but 5 name(s)"),
        ({"predictions": ["oct4"]}, "1 prediction(s) but 6 name(s)"),
        ({"probabilities": PROBABILITIES[:4]}, "probabilities has 4 row(s) but there are 6 name(s)"),
        ({"probabilities": PROBABILITIES[:, :2]}, "probabilities has 2 column(s) but there are 3 class name(s)"),
        ({"probabilities": PROBABILITIES[0]}, "must be 2-D"),
        ({"class_names": ["a", "a", "b"]}, "duplicates"),
        ({"predictions": [0, 1, 2, 3, 0, 0]}, "predictions[3] is class index 3"),
        ({"predictions": None, "probabilities": None}, "no probabilities"),
    ],
    ids=[
        "names",
        "names-no-probabilities",
        "predictions",
        "rows",
        "columns",
        "1-d",
        "duplicate-classes",
        "bad-index",
        "nothing-to-argmax",
    ],
)
def test_bad_calls_are_one_line_value_errors_and_write_nothing(tmp_path, overrides, message):
    out = tmp_path / "p.csv"
    with pytest.raises(ValueError) as error:
        _write(out, **overrides)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_non_string_names_are_a_type_error(tmp_path):
    with pytest.raises(TypeError, match=r"names\[1\] is a int"):
        write_predictions_csv(tmp_path / "p.csv", ["a", 2], ["x", "y"])


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    out = _write(tmp_path / "p.csv")
    before = out.read_bytes()

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(predictions_module.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_predictions_csv(out, ["other"], ["x"])
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.csv"]
    monkeypatch.undo()
    write_predictions_csv(out, ["other"], ["x"])  # and a good write replaces it
    assert out.read_text() == "name,prediction\nother,x\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("id,label\nx,y\n", "is not name,prediction"),
        ("name,prediction,p_a\nx,a\n", ":2: 2 field(s), but the header has 3"),
        ("name,prediction,p_a\nx,a,high\n", ":2: a probability is not a number"),
    ],
)
def test_reading_a_malformed_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError) as error:
        read_predictions_csv(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_module_does_not_import_torch():
    import subprocess
    import sys

    # Load the file alone (the mambakit package itself imports torch) and see what it pulled in.
    code = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('p', sys.argv[1]); "
        "module = sys.modules['p'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "print('torch' in sys.modules, hasattr(module, 'write_predictions_csv'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, predictions_module.__file__], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False True"
