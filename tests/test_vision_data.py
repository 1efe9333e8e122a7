"""The vision data layer: every reader on small real image files written here (PNG, JPEG, grey, RGBA, 16-bit,
palette, CMYK, a truncated JPEG, a text file among images), the embedded Fashion-MNIST subset, splits, the lazy
torch Dataset, and that every error is one line naming the file."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
from mambakit.apps.vision.data import (
    EMBEDDED_FILE,
    ImageDataset,
    ImageRecord,
    LabelledImages,
    VisionDataError,
    check_images,
    embedded_dataset,
    encode_labels,
    load_image,
    load_labelled_images,
    read_hf_dataset,
    read_image_folder,
    read_image_table,
    read_images,
    split_indices,
)
from PIL import Image

from mambakit.errors import UserError
from mambakit.splits import stratified_split


def _rgb(value: int, size: tuple[int, int] = (6, 5)) -> Image.Image:
    """A small RGB image whose pixels tell it apart: red channel = value."""
    array = np.zeros((size[1], size[0], 3), np.uint8)
    array[..., 0], array[..., 1], array[..., 2] = value, 255 - value, 7
    return Image.fromarray(array)


def _save(image: Image.Image, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _folder(root, classes=("cat", "dog"), per_class=2):
    for c, name in enumerate(classes):
        for i in range(per_class):
            _save(_rgb(40 * c + i), root / name / f"{i}.png")
    return root


def _error(call, *args, **kwargs) -> str:
    """The message of the VisionDataError the call raises, checked to be one line."""
    with pytest.raises(VisionDataError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message and message
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)
    return message


# --- load_image ---------------------------------------------------------------------------------------------


def test_load_image_png_jpeg_and_bytes_are_rgb(tmp_path):
    png = _save(_rgb(200), tmp_path / "a.png")
    jpeg = _save(_rgb(100, (16, 16)), tmp_path / "b.JPG", quality=95)
    image = load_image(png)
    assert image.mode == "RGB" and image.size == (6, 5)
    assert np.asarray(image)[0, 0].tolist() == [200, 55, 7]
    assert load_image(str(png)).size == (6, 5)
    decoded = np.asarray(load_image(jpeg)).astype(int)
    assert decoded.shape == (16, 16, 3) and abs(decoded[8, 8, 0] - 100) <= 3
    assert np.array_equal(np.asarray(load_image(png.read_bytes())), np.asarray(image))


def test_load_image_grey_palette_cmyk_and_arrays(tmp_path):
    grey = _save(Image.fromarray(np.full((4, 3), 77, np.uint8)), tmp_path / "grey.png")
    assert np.asarray(load_image(grey)).tolist() == [[[77, 77, 77]] * 3] * 4
    palette = _save(_rgb(30).convert("P"), tmp_path / "palette.gif")
    assert load_image(palette).mode == "RGB"
    cmyk = _save(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    red = np.asarray(load_image(cmyk)).astype(int)[2, 2]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    bilevel = _save(Image.new("1", (3, 3), 1), tmp_path / "bits.bmp")
    assert np.asarray(load_image(bilevel)).min() == 255
    assert np.asarray(load_image(np.full((2, 2), 9, np.uint8))).tolist() == [[[9, 9, 9]] * 2] * 2
    assert load_image(np.zeros((2, 2, 4), np.uint8)).mode == "RGB"


def test_load_image_rgba_and_transparent_palette_go_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent: white
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black: mid grey
    path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png")
    pixels = np.asarray(load_image(path)).astype(int)
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[0, 1].tolist() == [255, 255, 255]
    assert all(abs(v - 127) <= 1 for v in pixels[1, 0])
    grey_alpha = _save(Image.new("LA", (2, 2), (0, 0)), tmp_path / "la.png")
    assert np.asarray(load_image(grey_alpha)).min() == 255
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0] * 256)
    path = _save(palette, tmp_path / "transparent.png", transparency=0)
    assert np.asarray(load_image(path)).min() == 255


def test_load_image_scales_16_bit(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")  # really stored and read back as 16-bit
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 1, 128, 255]
    tiff = _save(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)), tmp_path / "float.tiff")
    assert np.asarray(load_image(tiff))[0, :, 0].tolist() == [0, 128, 255]


def test_load_image_applies_exif_orientation(tmp_path):
    image = _rgb(10, (6, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(image, tmp_path / "phone.jpg", exif=exif)
    assert load_image(path).size == (3, 6)


def test_load_image_errors_name_the_file(tmp_path):
    jpeg = _save(_rgb(100, (64, 64)), tmp_path / "whole.jpg")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    message = _error(load_image, truncated)
    assert message.startswith(f"{truncated}: ") and "truncated" in message
    text = tmp_path / "notes.png"
    text.write_text("not an image\nsecond line\n")
    assert _error(load_image, text).startswith(f"{text}: not an image")
    assert _error(load_image, tmp_path / "missing.png").startswith(f"{tmp_path / 'missing.png'}: no such image file")
    assert "is a directory" in _error(load_image, tmp_path)
    assert _error(load_image, b"junk", source="data.parquet (row 3)").startswith("data.parquet (row 3): ")
    assert _error(load_image, np.zeros((2, 2), np.float32)).startswith("<array>: ")
    record = ImageRecord(truncated, "cat", f"{truncated}")
    assert _error(check_images, [record]).startswith(str(truncated))


# --- image folders ------------------------------------------------------------------------------------------


def test_image_folder_classes_sorted_nested_and_hidden_ignored(tmp_path):
    root = _folder(tmp_path / "pets", ("dog", "cat", "bird"))
    _save(_rgb(1), root / "cat" / "deeper" / "x.jpeg")
    _save(_rgb(2), root / ".ipynb_checkpoints" / "y.png")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\1")
    data = read_image_folder(root)
    assert data.classes == ["bird", "cat", "dog"] and data.splits is None
    assert len(data.records) == 7
    assert sorted(r.label for r in data.records).count("cat") == 3
    assert all(r.source == str(r.image) for r in data.records)
    assert load_labelled_images(root).classes == data.classes
    assert load_labelled_images([root]).classes == data.classes


def test_image_folder_with_split_folders(tmp_path):
    root = tmp_path / "ds"
    _folder(root / "train", per_class=3)
    _folder(root / "validation", per_class=1)
    _folder(root / "test", per_class=2)
    data = read_image_folder(root)
    assert data.classes == ["cat", "dog"]
    assert {name: len(indices) for name, indices in data.splits.items()} == {"train": 6, "val": 2, "test": 4}
    assert all(data.records[i].split == "val" for i in data.splits["val"])
    assert split_indices(data) == {name: sorted(v) for name, v in data.splits.items()}


def test_image_folder_skips_non_images_with_one_warning_and_fails_on_bad_image_when_decoded(tmp_path):
    root = _folder(tmp_path / "pets")
    (root / "cat" / "readme.txt").write_text("notes")
    (root / "dog" / "labels.csv").write_text("a,b")
    bad = root / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = read_image_folder(root)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "skipped 2 file(s)" in messages[0] and "\n" not in messages[0]
    assert len(data.records) == 5  # the broken .png is listed; it fails when decoded, naming it
    dataset = ImageDataset(data.records, data.classes)
    broken = next(i for i, r in enumerate(data.records) if r.image == bad)
    assert _error(dataset.__getitem__, broken).startswith(f"{bad}: ")


def test_image_folder_errors(tmp_path):
    root = _folder(tmp_path / "pets")
    (root / "fish").mkdir()
    message = _error(read_image_folder, root)
    assert message.startswith(f"{root / 'fish'}: class folder holds no images")
    (root / "fish" / "only.txt").write_text("x")
    assert _error(read_image_folder, root).startswith(f"{root / 'fish'}: ")

    single = _folder(tmp_path / "single", ("cat",))
    assert "classification needs at least 2 classes" in _error(read_image_folder, single)
    assert _error(read_image_folder, tmp_path / "nowhere").startswith(f"{tmp_path / 'nowhere'}: no such file")

    flat = tmp_path / "flat"
    _save(_rgb(3), flat / "a.png")
    assert "images but no class subfolders" in _error(read_image_folder, flat)
    assert "not a folder" in _error(read_image_folder, flat / "a.png")

    split = tmp_path / "split"
    _folder(split / "test")
    assert "no train/" in _error(read_image_folder, split)
    _folder(split / "train", ("cat", "dog"))
    _folder(split / "val", ("cat", "wolf"))
    assert "'wolf' is in the val split but not in train" in _error(read_image_folder, split)
    mixed = tmp_path / "mixed"
    _folder(mixed / "train")
    _folder(mixed / "extra")
    assert "holds split folders" in _error(read_image_folder, mixed)


def test_several_class_folders_as_data(tmp_path):
    _folder(tmp_path / "a", ("cat", "dog"))
    data = load_labelled_images([tmp_path / "a" / "cat", tmp_path / "a" / "dog"])
    assert data.classes == ["cat", "dog"] and len(data.records) == 4
    single = _error(load_labelled_images, [tmp_path / "a" / "cat", tmp_path / "a" / "cat" / "0.png"])
    assert single.startswith(str(tmp_path / "a" / "cat" / "0.png"))


# --- tables -------------------------------------------------------------------------------------------------


def test_csv_with_relative_paths_and_split_column(tmp_path):
    _save(_rgb(1), tmp_path / "imgs" / "a.png")
    _save(_rgb(2), tmp_path / "imgs" / "b.jpg")
    _save(_rgb(3), tmp_path / "imgs" / "c.png")
    _save(_rgb(4), tmp_path / "imgs" / "d.png")
    table = tmp_path / "sub" / "labels.csv"
    table.parent.mkdir()
    table.write_text(
        "Path,Label,split\n../imgs/a.png,cat,train\n../imgs/b.jpg,dog,train\n\n"
        f"../imgs/c.png,cat,valid\n{tmp_path / 'imgs' / 'd.png'},dog,test\n",
        encoding="utf-8-sig",  # a BOM, as Excel writes it
    )
    data = load_labelled_images(table)
    assert data.classes == ["cat", "dog"]
    assert data.splits == {"train": [0, 1], "val": [2], "test": [3]}
    assert data.records[0].image == table.parent / "../imgs/a.png"
    assert data.records[2].source == f"{table}:5 (../imgs/c.png)"
    assert np.asarray(load_image(data.records[1].image)).shape == (5, 6, 3)

    tsv = tmp_path / "labels.tsv"
    tsv.write_text("image\tclass\nimgs/a.png\tcat\nimgs/b.jpg\tdog\n")
    assert [r.label for r in load_labelled_images(tsv).records] == ["cat", "dog"]
    assert load_labelled_images(tsv).splits is None
    unlabelled = tmp_path / "predict.csv"
    unlabelled.write_text("path\nimgs/a.png\n")
    assert [r.label for r in read_image_table(unlabelled, require_label=False)] == [None]


def test_csv_errors(tmp_path):
    _save(_rgb(1), tmp_path / "a.png")
    cases = {
        "no_label.csv": ("path,kind\na.png,cat\n", ":1: no 'label' column"),
        "no_path.csv": ("name,label\na.png,cat\n", ":1: no 'path' column"),
        "missing_image.csv": ("path,label\na.png,cat\nb.png,dog\n", ":3: "),
        "empty_label.csv": ("path,label\na.png,\n", ":2: empty label"),
        "bad_split.csv": ("path,label,split\na.png,cat,holdout\n", ":2: split must be"),
        "short_row.csv": ("path,label\na.png\n", ":2: 1 field(s)"),
        "header_only.csv": ("path,label\n", ": no rows"),
        "one_class.csv": ("path,label\na.png,cat\na.png,cat\n", "at least 2 classes"),
        "no_train.csv": ("path,label,split\na.png,cat,test\na.png,dog,test\n", "no train split"),
        "part_split.csv": ("path,label,split\na.png,cat,train\na.png,dog,\n", ""),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        message = _error(load_labelled_images, tmp_path / name)
        assert message.startswith(str(tmp_path / name)) and expected in message, message
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"path,label\n\xff\xfe\x00\n")
    assert "not a UTF-8 text table" in _error(load_labelled_images, binary)


def test_unknown_data_files(tmp_path):
    image = _save(_rgb(1), tmp_path / "one.png")
    assert "one image holds no labels" in _error(load_labelled_images, image)
    other = tmp_path / "data.json"
    other.write_text("{}")
    assert "unknown data file type '.json'" in _error(load_labelled_images, other)
    assert _error(load_labelled_images, tmp_path / "gone.csv").startswith(str(tmp_path / "gone.csv"))


# --- Hugging Face datasets dumps ----------------------------------------------------------------------------


def _png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    _rgb(value).save(buffer, format="PNG")
    return buffer.getvalue()


def _hf_parquet(path, labels, names=("cat", "dog"), label_type=None):
    """A Parquet file laid out as `datasets` writes it: an Image struct column and a ClassLabel int column,
    the features in the schema's "huggingface" metadata."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": _png_bytes(10 * i), "path": f"img{i}.png"} for i in range(len(labels))], image_type)
    label_array = pa.array(labels, label_type or (pa.int64() if isinstance(labels[0], int) else pa.string()))
    features: dict[str, dict] = {"image": {"_type": "Image"}}
    if names is not None:
        features["label"] = {"names": list(names), "_type": "ClassLabel"}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    table = pa.table({"image": images, "label": label_array}).replace_schema_metadata(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def test_parquet_file_in_hf_layout(tmp_path):
    path = _hf_parquet(tmp_path / "pets.parquet", [1, 0, 1], names=("cat", "dog", "fish"))
    data = load_labelled_images(path)
    assert data.classes == ["cat", "dog", "fish"]  # the ClassLabel order, kept so ids match the dataset
    assert [r.label for r in data.records] == ["dog", "cat", "dog"] and data.splits is None
    assert data.records[2].source == f"{path} (row 2)"
    assert np.asarray(load_image(data.records[1].image, data.records[1].source))[0, 0, 0] == 10
    dataset = ImageDataset(data.records, data.classes)
    assert dataset.labels.tolist() == [1, 0, 1]

    strings = _hf_parquet(tmp_path / "strings.parquet", ["zebra", "ant"], names=None)
    assert read_hf_dataset(strings).classes == ["ant", "zebra"]
    numbers = _hf_parquet(tmp_path / "numbers.parquet", [10, 2, 10], names=None)
    assert read_hf_dataset(numbers).classes == ["2", "10"]


def test_parquet_folder_splits_from_file_names(tmp_path):
    root = tmp_path / "hub"
    _hf_parquet(root / "data" / "train-00000-of-00002.parquet", [0, 1])
    _hf_parquet(root / "data" / "train-00001-of-00002.parquet", [1, 0])
    _hf_parquet(root / "data" / "test-00000-of-00001.parquet", [0, 1])
    data = load_labelled_images(root)
    assert data.splits == {"test": [0, 1], "train": [2, 3, 4, 5]}
    assert split_indices(data, val_fraction=0.5)["val"] and split_indices(data)["test"] == [0, 1]
    assert len(read_images(root)) == 6


def test_parquet_errors(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    no_label = tmp_path / "no_label.parquet"
    pq.write_table(pa.table({"image": pa.array([_png_bytes(1)]), "other": [1]}), no_label)
    assert _error(load_labelled_images, no_label).startswith(f"{no_label}: no label column")
    assert read_images(no_label)[0].label is None
    no_image = tmp_path / "no_image.parquet"
    pq.write_table(pa.table({"label": [0, 1]}), no_image)
    assert _error(load_labelled_images, no_image).startswith(f"{no_image}: no image column")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really")
    assert _error(load_labelled_images, corrupt).startswith(f"{corrupt}: not a readable Parquet file")
    one = _hf_parquet(tmp_path / "one.parquet", [0, 0])
    assert "at least 2 classes" in _error(load_labelled_images, one)
    out_of_range = _hf_parquet(tmp_path / "range.parquet", [0, 5])
    assert _error(load_labelled_images, out_of_range).startswith(f"{out_of_range} (row 1): label 5 is out of range")
    missing = _hf_parquet(tmp_path / "missing.parquet", [0, -1])
    assert _error(load_labelled_images, missing).startswith(f"{missing} (row 1): no label")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(load_labelled_images, empty).startswith(f"{empty}: no class subfolders")
    bad_bytes = tmp_path / "bad_bytes.parquet"
    _hf_parquet(bad_bytes, [0, 1])
    table = pq.read_table(bad_bytes)
    images = pa.array([{"bytes": b"junk", "path": None}] * 2, table.column("image").type)
    pq.write_table(table.set_column(0, "image", images), bad_bytes)
    record = load_labelled_images(bad_bytes).records[1]
    assert _error(load_image, record.image, record.source).startswith(f"{bad_bytes} (row 1): ")


def test_missing_pyarrow_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    import builtins

    path = _hf_parquet(tmp_path / "x.parquet", [0, 1])
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    message = _error(load_labelled_images, path)
    assert "pip install 'mambakit[vision]'" in message


def test_save_to_disk_arrow_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    split = datasets.Dataset.from_dict({"image": [_rgb(i) for i in range(4)], "label": [0, 1, 1, 0]}, features)
    datasets.DatasetDict({"train": split, "test": split.select([0, 1])}).save_to_disk(str(tmp_path / "dd"))
    data = load_labelled_images(tmp_path / "dd")
    assert data.classes == ["a", "b"]
    assert {name: len(v) for name, v in data.splits.items()} == {"test": 2, "train": 4}
    assert np.asarray(load_image(data.records[0].image)).shape == (5, 6, 3)


# --- predict-time inputs and labels -------------------------------------------------------------------------


def test_read_images_for_prediction_and_unknown_labels(tmp_path):
    root = _folder(tmp_path / "pets")
    (root / "notes.txt").write_text("x")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        records = read_images([root, root / "cat" / "0.png"])
    assert len(records) == 5 and all(r.label is None for r in records)
    dataset = ImageDataset(records, ["cat", "dog"])
    assert set(dataset[0]) == {"pixel_values"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(read_images, empty).startswith(f"{empty}: no images")

    table = tmp_path / "eval.csv"
    table.write_text("path,label\npets/cat/0.png,cat\npets/dog/1.png,wolf\n")
    labelled = read_image_table(table)
    message = _error(ImageDataset, labelled, ["cat", "dog"])
    assert message.startswith(f"{table}:3 (pets/dog/1.png): label 'wolf' is not one of the model's classes")
    mixed = [labelled[0], ImageRecord(root / "dog" / "0.png", None, "x.png")]
    assert _error(encode_labels, mixed, ["cat", "dog"]).startswith("x.png: no label")


def test_image_dataset_items_and_transform(tmp_path):
    data = read_image_folder(_folder(tmp_path / "pets"))
    dataset = ImageDataset(data.records, data.classes)
    item = dataset[3]
    assert item["pixel_values"].shape == (3, 5, 6) and item["pixel_values"].dtype == torch.float32
    assert item["pixel_values"].is_contiguous() and 0 <= item["pixel_values"].min() <= item["pixel_values"].max() <= 1
    assert item["labels"].dtype == torch.long and item["labels"].item() == 1
    resized = ImageDataset(data.records, data.classes, transform=lambda image: image.resize((4, 4)))
    assert resized[0]["pixel_values"].shape == (3, 4, 4)
    arrays = ImageDataset(data.records, None, transform=lambda image: np.asarray(image))
    assert arrays[0]["pixel_values"].shape == (5, 6, 3) and "labels" not in arrays[0]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["pixel_values"].shape == (4, 3, 5, 6) and batch["labels"].tolist() == [0, 0, 1, 1]


# --- splits -------------------------------------------------------------------------------------------------


def test_stratified_split_is_seeded_and_balanced():
    labels = ["a"] * 50 + ["b"] * 30
    first = stratified_split(labels, 0.1, 0.2, seed=3)
    assert first == stratified_split(labels, 0.1, 0.2, seed=3) != stratified_split(labels, 0.1, 0.2, seed=4)
    assert sorted(first["train"] + first["val"] + first["test"]) == list(range(80))
    assert sum(labels[i] == "a" for i in first["test"]) == 10 and sum(labels[i] == "b" for i in first["test"]) == 6
    with pytest.raises(ValueError):
        stratified_split(labels, 0.6, 0.5)
    records = [ImageRecord(np.zeros((2, 2), np.uint8), label, f"r{i}") for i, label in enumerate(labels)]
    assert split_indices(LabelledImages(records, ["a", "b"]), 0.1, 0.2, seed=3) == first


# --- the embedded data --------------------------------------------------------------------------------------


def test_embedded_dataset_size_balance_and_labels():
    assert EMBEDDED_FILE.is_file() and EMBEDDED_FILE.stat().st_size < 6_000_000
    data = embedded_dataset()
    assert data.classes == [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    assert len(data.records) == 7000
    sizes = {name: len(indices) for name, indices in data.splits.items()}
    assert sizes == {"train": 5400, "val": 600, "test": 1000}
    for split, per_class in (("train", 540), ("val", 60), ("test", 100)):
        counts = np.bincount(encode_labels([data.records[i] for i in data.splits[split]], data.classes))
        assert counts.tolist() == [per_class] * 10, split
    assert not set(data.splits["train"]) & set(data.splits["val"])
    assert all(data.records[i].split == "test" for i in data.splits["test"])
    assert data.splits == embedded_dataset().splits != embedded_dataset(seed=1).splits
    first = data.records[0]
    assert first.image.shape == (28, 28) and first.image.dtype == np.uint8
    assert first.label == "Ankle boot"  # Fashion-MNIST's first training image
    assert "train-images-idx3-ubyte image 0" in first.source
    with np.load(EMBEDDED_FILE) as archive:
        assert archive["train_index"][0] == 0 and archive["train_labels"][0] == 9
        assert archive["train_images"].mean() > 50  # real clothing pixels, not a blank array
    dataset = ImageDataset([data.records[i] for i in data.splits["test"]], data.classes)
    item = dataset[0]
    assert item["pixel_values"].shape == (3, 28, 28) and item["labels"].item() == data.classes.index(
        data.records[data.splits["test"][0]].label
    )
