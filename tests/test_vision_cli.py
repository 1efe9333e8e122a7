"""`mambakit train|eval|predict vision` end to end on tiny runs, and their one-line errors."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("timm", reason="the vision app needs timm (pip install mambakit[vision])")

from mambakit.apps.vision.data import embedded_dataset
from PIL import Image

from mambakit.cli import main


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mambakit.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """test_vmamba trained for a few steps on the embedded Fashion-MNIST subset."""
    out = tmp_path_factory.mktemp("vision") / "run"
    assert (
        main(
            [
                "train",
                "vision",
                "--model",
                "test_vmamba",
                "--out",
                str(out),
                "--max-steps",
                "4",
                "--batch-size",
                "16",
                "--img-size",
                "28",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Three classes of real images (from the embedded set) as PNG files in class folders."""
    root = tmp_path_factory.mktemp("images")
    data = embedded_dataset()
    for name in data.classes[:3]:
        (root / name.replace("/", "-")).mkdir()
    for record in data.records[:400]:
        if record.label in data.classes[:3]:
            folder = root / record.label.replace("/", "-")
            Image.fromarray(np.asarray(record.image)).save(folder / f"{len(list(folder.iterdir()))}.png")
    return root


def test_train_writes_a_loadable_checkpoint_with_labels(classifier):
    from mambakit.models import load_model

    model = load_model(classifier / "best")
    assert type(model).__name__ == "ImageClassifier" and model.config.model_name == "test_vmamba"
    assert model.labels[0] == "T-shirt/top" and len(model.labels) == 10
    assert (classifier / "best" / "run_record.json").exists()


def test_a_fresh_process_loads_the_checkpoint_through_the_core_alone(classifier):
    """`mambakit.load_model` imports the vision app itself (the checkpoint names its domain); without timm it names
    the extra to install."""
    load = f"import mambakit; model = mambakit.load_model({str(classifier / 'best')!r}); print(type(model).__name__)"
    loaded = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300)
    assert loaded.stdout.strip() == "ImageClassifier", loaded.stderr[-2000:]
    without_timm = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.modules['timm'] = None; {load}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert without_timm.returncode == 1
    assert "the vision domain needs timm: pip install 'mambakit[vision]'" in without_timm.stderr.splitlines()[-1]


def test_eval_writes_metrics_and_a_confusion_matrix(classifier, tmp_path, capsys):
    png = tmp_path / "confusion.png"
    assert main(["eval", "vision", "-c", str(classifier / "best"), "--confusion", str(png)]) == 0
    out = capsys.readouterr().out
    assert "top5" in out and "accuracy" in out
    assert Image.open(png).size[0] > 300


def test_predict_folder_writes_top_k_and_scores_labelled_input(classifier, image_folder, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert (
        main(
            [
                "predict",
                "vision",
                "-c",
                str(classifier / "best"),
                "--data",
                str(image_folder),
                "--top-k",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(1 for _ in image_folder.rglob("*.png"))
    assert set(rows[0]) == {"name", "prediction", "top1", "p_top1", "top2", "p_top2", "top3", "p_top3"}
    assert all(row["prediction"] == row["top1"] for row in rows)


@pytest.mark.slow
def test_train_on_a_folder_with_another_model_and_bad_inputs(image_folder, tmp_path):
    out = tmp_path / "resnet"
    assert (
        main(
            [
                "train",
                "vision",
                "--data",
                str(image_folder),
                "--model",
                "resnet18",
                "--img-size",
                "32",
                "--max-steps",
                "2",
                "--batch-size",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    broken = tmp_path / "broken"
    for name in ("a", "b"):
        (broken / name).mkdir(parents=True)
        for index in range(10):
            Image.new("RGB", (8, 8), (25 * index, 0, 0)).save(broken / name / f"ok{index}.png")
    (broken / "a" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = cli(
        "train", "vision", "--data", str(broken), "--max-steps", "4", "--batch-size", "4", "--out", str(tmp_path / "x")
    )
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "bad.jpg" in result.stderr and "Traceback" not in result.stderr
    single = tmp_path / "single" / "only"
    single.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(single / "x.png")
    result = cli("train", "vision", "--data", str(single.parent), "--max-steps", "1")
    assert result.returncode != 0 and "class" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    not_weights = tmp_path / "weights.pth"
    not_weights.write_bytes(b"not a checkpoint")
    result = cli("predict", "vision", "-c", str(not_weights), "--data", str(image_folder))
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "weights.pth" in result.stderr and "Traceback" not in result.stderr


def test_a_checkpoint_of_another_domain_is_one_line(tmp_path):
    from mambakit.cli import main as run

    text_run = tmp_path / "text"
    (tmp_path / "notes.txt").write_text("some text to learn from " * 50)
    assert (
        run(
            [
                "train",
                "text",
                "--out",
                str(text_run),
                "--max-steps",
                "1",
                "--seq-len",
                "32",
                "--data",
                str(tmp_path / "notes.txt"),
            ]
        )
        == 0
    )
    result = cli("eval", "vision", "-c", str(text_run / "last"))
    assert result.returncode != 0 and "a text checkpoint, not a vision checkpoint" in result.stderr


def test_timm_optimizer_with_layer_decay_scales_the_groups(tmp_path):
    import torch

    out = tmp_path / "lamb"
    assert (
        main(
            [
                "train",
                "vision",
                "--model",
                "test_vmamba",
                "--out",
                str(out),
                "--max-steps",
                "2",
                "--batch-size",
                "8",
                "--img-size",
                "28",
                "--opt",
                "lamb",
                "--layer-decay",
                "0.75",
            ]
        )
        == 0
    )
    groups = torch.load(out / "last" / "trainer_state.pt", weights_only=True)["optimizer"]["param_groups"]
    # timm's scheduler applies each depth's lr_scale: one lr per depth, the last layers' the largest.
    rates = sorted({round(group["lr"], 12) for group in groups})
    assert len(rates) > 2 and all(group["lr"] == pytest.approx(group["lr_scale"] * rates[-1]) for group in groups)
    result = cli("train", "vision", "--model", "test_vmamba", "--opt", "nope", "--max-steps", "1")
    assert result.returncode != 0 and "--opt 'nope'" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_predict_with_released_weights_names_imagenet_classes(image_folder, tmp_path):
    import timm
    import torch

    torch.manual_seed(0)
    source = timm.create_model("test_vmamba").eval()  # 1,000 classes, as the releases
    weights = tmp_path / "vssm_test.pth"
    torch.save({"model": source.state_dict(), "epoch": 1}, weights)  # the layout upstream's training code saves
    out = tmp_path / "imagenet.csv"
    assert (
        main(
            [
                "predict",
                "vision",
                "-c",
                str(weights),
                "--model",
                "test_vmamba",
                "--data",
                str(image_folder),
                "--top-k",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    from timm.data import ImageNetInfo

    info = ImageNetInfo()  # reads timm's class lists: once, not per class
    names = {info.index_to_description(i) for i in range(1000)}
    assert rows and all(row["top1"] in names and row["top2"] in names for row in rows)
    assert all(float(row["p_top1"]) >= float(row["p_top2"]) for row in rows)


@pytest.mark.parametrize("sched", ["cosine", "step"])
def test_timm_schedules_warm_up_decay_and_resume(sched):
    from types import SimpleNamespace

    import torch
    from mambakit.apps.vision.cli import VisionOptions, _schedule

    from mambakit.errors import UserError
    from mambakit.train import TrainConfig

    config = TrainConfig(out_dir="unused", max_steps=40, lr=1e-2, min_lr_ratio=0.1)
    build = _schedule(SimpleNamespace(options=VisionOptions(sched=sched)))

    def rates(schedule, optimizer, steps):
        out = []
        for _ in range(steps):
            optimizer.step()
            schedule.step()
            out.append(optimizer.param_groups[0]["lr"])
        return out

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=config.lr)
    schedule = build(optimizer, config, 4, 40)
    first, rest = rates(schedule, optimizer, 10), None
    state = schedule.state_dict()
    rest = rates(schedule, optimizer, 30)
    assert first[2] < first[3] == pytest.approx(1e-2)  # linear warm-up to the peak at step 4
    assert rest[-1] == pytest.approx(1e-3, rel=0.05) if sched == "cosine" else rest[-1] == pytest.approx(1e-5)
    resumed_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=config.lr)
    resumed = build(resumed_optimizer, config, 4, 40)
    resumed.load_state_dict(state)
    assert rates(resumed, resumed_optimizer, 30) == rest
    with pytest.raises(UserError, match="--sched 'plateau'"):
        _schedule(SimpleNamespace(options=VisionOptions(sched="plateau")))
