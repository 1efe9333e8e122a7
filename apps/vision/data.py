"""Images for classification: the user's data (an ImageFolder tree, a CSV/TSV of path,label rows, a Hugging Face
`datasets` Parquet or Arrow dump) or the embedded Fashion-MNIST subset, turned into labelled records; decoding to
RGB; reproducible splits; a lazy torch `Dataset`.

Reading is cheap: readers list files and labels and check that files exist, but decode nothing. Pixels are decoded
when a `Dataset` item is asked for (`load_image`), so a file with an image suffix that does not decode is an error
then, naming the file; `check_images` decodes everything up front for callers that want to fail early.

Every problem with a user's data raises `VisionDataError` (a `UserError`, so the CLI prints it as one line and
exits with code 2): one line naming the file (and the table row) and what to do.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from mambakit import hf_dumps, labelled_files
from mambakit.errors import UserError, described
from mambakit.hf_dumps import HF_SUFFIXES
from mambakit.labelled_files import read_label_table, some
from mambakit.splits import SPLIT_NAMES

#: Suffixes (compared lowercased) of the files an image folder's reader takes; other files are skipped with one
#: warning. A file with one of these suffixes that does not decode is an error when it is decoded.
IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".gif",
    ".bmp",
    ".dib",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".tga",
)
TABLE_SUFFIXES = (".csv", ".tsv")
#: Header names accepted for a table's image path column (compared lowercased), first match wins.
PATH_COLUMNS = ("path", "image", "image_path", "file", "file_name", "filename", "filepath")
#: Column names tried for a `datasets` dump when its metadata names no Image feature.
HF_IMAGE_COLUMNS = ("image", "img")
#: What to install for the optional readers.
VISION_EXTRA = "pip install 'mambakit[vision]'"

DATA_DIR = Path(__file__).resolve().with_name("data")
#: The embedded default data set (provenance and licence in data/README.md).
EMBEDDED_FILE = DATA_DIR / "fashion_mnist_subset.npz"

ImageInput = str | Path | bytes | np.ndarray | Image.Image


class VisionDataError(UserError):
    """Bad vision input; the message is one line: `file[:row]: what is wrong; what to do`."""


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One image as read, not yet decoded.

    `image` is a file path, encoded file bytes (e.g. from a Parquet row) or decoded pixels (uint8, H x W or
    H x W x C, as the embedded data holds them); `label` the class name when the input has one; `source` where
    it came from, for messages ("file", "table.csv:3 (img/a.png)", "data.parquet (row 7)"); `split` the split
    ("train", "val", "test") the input assigns it to, if any.
    """

    image: Path | bytes | np.ndarray
    label: str | None = None
    source: str = ""
    split: str | None = None


@dataclass
class LabelledImages:
    """Labelled images: `classes` are the class names in class-id order (folders and tables: sorted; a `datasets`
    ClassLabel and the embedded set: their own order); `splits` maps "train"/"val"/"test" to record indices when
    the data brings a split, else it is None."""

    records: list[ImageRecord]
    classes: list[str]
    splits: dict[str, list[int]] | None = None


# --- decoding -----------------------------------------------------------------------------------------------


def _on_white(image: Image.Image) -> Image.Image:
    """An image with transparency composited on a white background, as RGB."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any Pillow mode: 16/32-bit integer grey scaled from 0..65535 to 0..255, float grey from 0..1 (or
    clipped to 0..255 when its values exceed 1), transparency (RGBA, LA, PA, palette with a transparent entry)
    composited on white, CMYK/YCbCr/1/L/P converted."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I"):  # "I;16", "I;16B", "I;16L", "I;16N" and 32-bit "I" (how 16-bit files often open)
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        floats = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if floats.size and floats.max() <= 1.0:
            floats = floats * 255.0
        return Image.fromarray(np.clip(np.rint(floats), 0, 255).astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return _on_white(image)
    return image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise UserError(f"pixels must be uint8 of shape HxW, HxWx3 or HxWx4, got {array.dtype} {array.shape}")
    return Image.fromarray(array)


def load_image(image: ImageInput, source: str | None = None) -> Image.Image:
    """An RGB PIL image from a file path, encoded bytes, a uint8 array or a PIL image.

    Grey, palette, 1-bit, CMYK and YCbCr images are converted; transparency is composited on white; 16-bit
    images are scaled to 8 bits (see `_to_rgb`); the EXIF orientation is applied, so photos come out upright.
    A missing, unreadable, truncated or non-image input is a one-line `VisionDataError` naming `source` (by
    default the path, or "<bytes>" / "<array>").
    """
    if isinstance(image, str | Path):
        path = Path(image)
        where = source or str(path)
        if not path.is_file():
            what = "is a directory, not an image file" if path.is_dir() else "no such image file"
            raise VisionDataError(f"{where}: {what}; check the path")
    else:
        where = source or ("<bytes>" if isinstance(image, bytes | bytearray) else "<array>")
    try:
        if isinstance(image, np.ndarray):
            decoded = _from_array(image)
        elif isinstance(image, Image.Image):
            decoded = image
            decoded.load()
        else:
            handle = io.BytesIO(image) if isinstance(image, bytes | bytearray) else Path(image)
            with Image.open(handle) as opened:
                opened.load()  # decode every pixel now, so a truncated file fails here, not later
                result = _to_rgb(_upright(opened))
                return result.copy() if result is opened else result  # closing `opened` frees its pixels
        return _to_rgb(_upright(decoded))
    except Image.UnidentifiedImageError:
        raise VisionDataError(
            f"{where}: not an image Pillow can read (unknown format); remove it or convert it to PNG or JPEG"
        ) from None
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... on bad data
        raise VisionDataError(
            f"{where}: unreadable image, truncated or corrupt ({described(error)}); replace or remove the file"
        ) from None


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # a broken EXIF block does not make the pixels unreadable
        return image


def check_images(records: Iterable[ImageRecord]) -> None:
    """Decode every record's image once (slow for large data): the first one that does not decode is a
    `VisionDataError` naming it."""
    for record in records:
        load_image(record.image, record.source)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """float32 tensor (3, H, W) in [0, 1] of an RGB PIL image (the default `ImageDataset` transform)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous().float().div_(255.0)


# --- shared checks ------------------------------------------------------------------------------------------


def is_image_file(path: Path) -> bool:
    """Whether a file is taken as an image by its (lowercased) suffix; hidden files never are."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under `folder`, recursively, sorted; hidden files and folders are left out, and
    one this user may not read is an error."""
    return labelled_files.visible_files(folder, is_image_file, VisionDataError)


def _labelled(records: list[ImageRecord], where: Path | str, classes: Sequence[str] | None = None) -> LabelledImages:
    """Check labelled records (every one labelled, at least two classes, a consistent split) and wrap them."""
    if not records:
        raise VisionDataError(f"{where}: no images found")
    unlabelled = next((record for record in records if record.label is None), None)
    if unlabelled is not None:
        raise VisionDataError(f"{unlabelled.source}: no label; every image needs one for training and evaluation")
    present = sorted({record.label for record in records if record.label is not None})
    if len(present) < 2:
        raise VisionDataError(
            f"{where}: found {len(present)} class ({some(present)}); classification needs at least 2 classes"
        )
    return LabelledImages(records, list(classes) if classes is not None else present, _record_splits(where, records))


def _record_splits(where: Path | str, records: Sequence[ImageRecord]) -> dict[str, list[int]] | None:
    splits = labelled_files.record_splits(records, where, VisionDataError, "images")
    if splits is None:
        return None
    trained = {records[i].label for i in splits["train"]}
    for split in ("val", "test"):
        unseen = sorted({records[i].label for i in splits.get(split, [])} - trained, key=str)
        if unseen:
            raise VisionDataError(
                f"{where}: class {some([str(u) for u in unseen])} is in the {split} split but not in train; "
                f"a model cannot learn it"
            )
    return splits


# --- image folders ------------------------------------------------------------------------------------------


def _split_folders(root: Path) -> dict[str, Path]:
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    splits = {SPLIT_NAMES[p.name.lower()]: p for p in folders if p.name.lower() in SPLIT_NAMES}
    if splits:
        others = sorted(p.name for p in folders if p.name.lower() not in SPLIT_NAMES)
        if others:
            raise VisionDataError(
                f"{root}: holds split folders ({', '.join(sorted(p.name for p in splits.values()))}) and other "
                f"folders ({', '.join(others)}); put the class folders inside train/, val/ and test/"
            )
    return splits


def _class_folder_records(class_folders: Sequence[Path], split: str | None) -> list[ImageRecord]:
    records, skipped = [], []
    for folder in class_folders:
        images, others = _image_files(folder)
        skipped += others
        if not images:
            raise VisionDataError(
                f"{folder}: class folder holds no images (looked for {', '.join(IMAGE_SUFFIXES[:4])}, ...); "
                f"add images or remove the folder"
            )
        records += [ImageRecord(path, folder.name, str(path), split) for path in images]
    if skipped:
        labelled_files.warn_skipped(class_folders[0].parent, skipped, "images")
    return records


def _classes_root(root: Path, split: str | None) -> list[ImageRecord]:
    """The records of one ImageFolder tree: root/<class>/**/<image>."""
    class_folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_folders:
        loose = any(is_image_file(p) for p in root.iterdir() if p.is_file())
        what = "images but no class subfolders" if loose else "no class subfolders"
        raise VisionDataError(
            f"{root}: {what}; put each class's images in a subfolder named after the class "
            f"({root / 'cat' / '1.png'}, {root / 'dog' / '2.png'}, ...)"
        )
    loose_images = [p for p in root.iterdir() if p.is_file() and is_image_file(p)]
    if loose_images:
        warnings.warn(
            f"{root}: skipped {len(loose_images)} image(s) outside the class subfolders (e.g. {loose_images[0].name})",
            stacklevel=3,
        )
    return _class_folder_records(class_folders, split)


def read_image_folder(root: str | Path) -> LabelledImages:
    """An ImageFolder tree: `root/<class>/**/<image>` (a class is a subfolder's name; images may sit in deeper
    folders), or `root/train/<class>/...` with optional `root/val/` (or valid/validation/dev) and `root/test/`
    holding the user's split. Hidden files and folders (.DS_Store, .ipynb_checkpoints) are ignored; other files
    whose suffix is not an image suffix are skipped with one warning; an empty class folder, a single class, or
    a val/test class missing from train are errors."""
    root = Path(root)
    labelled_files.existing_paths(root, VisionDataError)
    if not root.is_dir():
        raise VisionDataError(f"{root}: not a folder; an image folder holds one subfolder of images per class")
    splits = _split_folders(root)
    if not splits:
        return _labelled(_classes_root(root, None), root)
    if "train" not in splits:
        raise VisionDataError(f"{root}: split folders {sorted(splits)} but no train/; add train/<class>/ folders")
    records: list[ImageRecord] = []
    for split in ("train", "val", "test"):
        if split in splits:
            records += _classes_root(splits[split], split)
    return _labelled(records, root)


# --- tables -------------------------------------------------------------------------------------------------


def read_image_table(path: str | Path, require_label: bool = True) -> list[ImageRecord]:
    """Records of a CSV or TSV file whose header names an image path column (`path`, or image, image_path, file,
    filename, filepath), a `label` (or `class`) column (optional when `require_label` is false) and optionally
    a `split` column (train, val/valid/validation/dev, test). Relative paths are relative to the table's
    folder; every listed file must exist (it is decoded later)."""
    rows = read_label_table(Path(path), PATH_COLUMNS, "image", VisionDataError, require_label)
    return [ImageRecord(row.file, row.label, row.source, row.split) for row in rows]


# --- Hugging Face datasets dumps (Parquet / Arrow) ----------------------------------------------------------

#: How the core's `datasets` dump reader finds and names images.
IMAGE_DUMP = hf_dumps.DumpKind("Image", HF_IMAGE_COLUMNS, "image", VisionDataError, VISION_EXTRA)


def read_hf_images(path: str | Path, require_label: bool = True) -> tuple[list[ImageRecord], list[str] | None]:
    """(records, ClassLabel names or None) of a Hugging Face `datasets` dump (`mambakit.hf_dumps.read_dump`):
    one `.parquet` file or a folder of them, or a `save_to_disk` folder of `.arrow` files. The image column is
    the feature typed `Image` (else `image`/`img`). Needs pyarrow (`mambakit[vision]`)."""
    path = Path(path)
    labelled_files.existing_paths(path, VisionDataError)
    rows, class_names = hf_dumps.read_dump(path, IMAGE_DUMP, require_label)
    return [ImageRecord(row.media, row.label, row.source, row.split) for row in rows], class_names


def read_hf_dataset(path: str | Path) -> LabelledImages:
    """Labelled images of a `datasets` dump (see `read_hf_images`); classes are the ClassLabel names when the
    metadata has them, else the sorted labels (integers in numeric order)."""
    records, names = read_hf_images(path, require_label=True)
    labelled = _labelled(records, path, names)
    if names is None:
        labelled.classes = labelled_files.numeric_aware(labelled.classes)
    return labelled


# --- what --data names --------------------------------------------------------------------------------------


def load_labelled_images(data: str | Path | Sequence[str | Path]) -> LabelledImages:
    """Labelled images from what a user passes as --data:

    - an ImageFolder tree, with or without train/val/test split folders (`read_image_folder`);
    - a CSV/TSV file of path,label[,split] rows (`read_image_table`);
    - a Hugging Face `datasets` dump: a .parquet file, or a folder of .parquet or .arrow files (`read_hf_dataset`);
    - several folders, one per class (the class is the folder's name).
    """
    paths = labelled_files.existing_paths(data, VisionDataError)
    if not paths:
        raise VisionDataError("no data given; pass an image folder, a CSV/TSV of path,label rows or a Parquet file")
    if len(paths) > 1:
        folders = [p for p in paths if p.is_dir()]
        if len(folders) != len(paths):
            file = next(p for p in paths if not p.is_dir())
            raise VisionDataError(f"{file}: with several --data paths, each must be one class's folder of images")
        if len({p.name for p in folders}) != len(folders):
            raise VisionDataError(f"{folders[0]}: two class folders have the same name; each class needs one folder")
        return _labelled(_class_folder_records(folders, None), folders[0].parent)
    path = paths[0]
    if path.is_dir():
        return read_hf_dataset(path) if hf_dumps.is_dump_folder(path) else read_image_folder(path)
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return _labelled(read_image_table(path), path)
    if suffix in HF_SUFFIXES:
        return read_hf_dataset(path)
    if suffix in IMAGE_SUFFIXES:
        raise VisionDataError(
            f"{path}: one image holds no labels; give a folder with one subfolder of images per class, a CSV/TSV "
            f"of path,label rows or a Parquet file"
        )
    raise VisionDataError(
        f"{path}: unknown data file type {suffix or '(no suffix)'!r}; give an image folder, a .csv/.tsv of "
        f"path,label rows or a .parquet file"
    )


def read_images(data: str | Path | Sequence[str | Path]) -> list[ImageRecord]:
    """Images to predict on, labels kept where the input has them: image files; folders (every image under
    them, recursively, sorted; non-images skipped with a warning); CSV/TSV tables (the label column optional);
    `datasets` dumps (the label column optional)."""
    records: list[ImageRecord] = []
    for path in labelled_files.existing_paths(data, VisionDataError):
        suffix = path.suffix.lower()
        if path.is_dir() and hf_dumps.is_dump_folder(path):
            records += read_hf_images(path, require_label=False)[0]
        elif path.is_dir():
            images, others = _image_files(path)
            labelled_files.warn_skipped(path, others, "images")
            if not images:
                raise VisionDataError(f"{path}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
            records += [ImageRecord(image, None, str(image)) for image in images]
        elif suffix in TABLE_SUFFIXES:
            records += read_image_table(path, require_label=False)
        elif suffix in HF_SUFFIXES:
            records += read_hf_images(path, require_label=False)[0]
        else:  # any other file is taken as an image; it is decoded (and checked) when used
            records.append(ImageRecord(path, None, str(path)))
    if not records:
        raise VisionDataError("no images given")
    return records


def encode_labels(records: Sequence[ImageRecord], classes: Sequence[str]) -> np.ndarray:
    """Class ids (int64) of the records' labels; a missing label or one outside `classes` (e.g. at predict or eval
    time, with a model trained on other classes) is an error naming the record's file (and row)."""
    return labelled_files.encode_labels(records, classes, VisionDataError, "images")


# --- splits -------------------------------------------------------------------------------------------------


#: Train/val/test record indices of labelled data (`mambakit.labelled_files.split_labelled`).
split_indices = labelled_files.split_labelled


# --- the embedded data --------------------------------------------------------------------------------------


def embedded_dataset(val_fraction: float = 0.1, seed: int = 0) -> LabelledImages:
    """The embedded Fashion-MNIST subset (data/README.md): 6,000 training and 1,000 test images, 28 x 28 grey,
    10 balanced classes, as records holding their pixels; splits "train" (the training images less
    `val_fraction` of them, carved per class with `seed`), "val" and "test" (Fashion-MNIST's own test images).
    Classes keep Fashion-MNIST's label order (T-shirt/top = 0 ... Ankle boot = 9)."""
    arrays = labelled_files.load_embedded_arrays(EMBEDDED_FILE, VisionDataError, "image")
    classes = [str(name) for name in arrays["class_names"]]
    records: list[ImageRecord] = []
    for split in ("train", "test"):
        images, labels, index = arrays[f"{split}_images"], arrays[f"{split}_labels"], arrays[f"{split}_index"]
        file = "train-images-idx3-ubyte" if split == "train" else "t10k-images-idx3-ubyte"
        records += [
            ImageRecord(images[i], classes[labels[i]], f"{EMBEDDED_FILE.name} ({file} image {index[i]})", split)
            for i in range(len(images))
        ]
    labelled = LabelledImages(records, classes, _record_splits(EMBEDDED_FILE, records))
    labelled.splits = split_indices(labelled, val_fraction, 0.0, seed)
    return labelled


# --- torch dataset ------------------------------------------------------------------------------------------


class ImageDataset(Dataset):
    """Images decoded lazily, one per item: {"pixel_values": tensor, "labels": int64 scalar tensor}.

    `transform` gets the RGB PIL image (`load_image`) and returns a tensor (a timm/torchvision transform); a PIL
    image or array it returns is converted with `to_tensor`; None means `to_tensor` alone (float 3 x H x W in
    [0, 1]). "labels" is present when `class_names` is given and the records are labelled; a label outside
    `class_names` is an error naming the record, at construction time.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        class_names: Sequence[str] | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.records = list(records)
        self.class_names = list(class_names) if class_names is not None else None
        self.transform = transform
        labelled = self.class_names is not None and any(record.label is not None for record in self.records)
        self.labels = encode_labels(self.records, self.class_names or []) if labelled else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        image = load_image(record.image, record.source)
        pixels = self.transform(image) if self.transform is not None else image
        if isinstance(pixels, Image.Image):
            pixels = to_tensor(pixels)
        elif isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(np.array(pixels))  # a copy: the array may be read-only
        item = {"pixel_values": pixels}
        if self.labels is not None:
            item["labels"] = torch.tensor(self.labels[index], dtype=torch.long)
        return item
