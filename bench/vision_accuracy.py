"""Accuracy at equal budget on the CPU: the smallest VMamba beside timm's resnet18 and a ViT-Tiny, each trained by
the same `mambakit train vision` recipe (the CLI's defaults: 3 epochs, AdamW, warm-up + cosine, the same
augmentation) on the embedded Fashion-MNIST subset, scored on its 1,000 test images.

    PYTHONPATH=.:bench python bench/vision_accuracy.py [--epochs 3] [--out bench/results]

Writes bench/results/vision_accuracy.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import report
import torch
from mambakit.apps.vision.cli import DOMAIN

from mambakit.cli_support import resolve_run_options, train_domain

#: model -> extra timm kwargs: the ViT gets 4x4 patches at 32x32 (64 tokens, as VMamba's first stage has).
MODELS: dict[str, dict[str, Any]] = {
    "vmamba_nano": {},
    "resnet18": {},
    "vit_tiny_patch16_224": {"img_size": 32, "patch_size": 4},
}


def train(model: str, model_kwargs: dict[str, Any], epochs: int, work: Path) -> dict[str, Any]:
    run, options = resolve_run_options(
        None, DOMAIN.options, {"model": model}, out=work / model, epochs=epochs, device="cpu"
    )
    run = dataclasses.replace(run, model={"model_kwargs": model_kwargs})
    start = time.perf_counter()
    test = train_domain(DOMAIN, run, options)
    seconds = time.perf_counter() - start
    from mambakit.models import load_model

    parameters = sum(p.numel() for p in load_model(work / model / "last").parameters())
    return {
        "model": model,
        "model_kwargs": model_kwargs,
        "parameters_m": parameters / 1e6,
        "seconds": seconds,
        "test": test,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Vision accuracy at equal budget (CPU, commit {results['commit']})",
        "",
        f"{results['cpu']}, {results['threads']} threads, torch {results['torch']}, timm {results['timm']}; "
        f"`mambakit train vision --model M --epochs {results['epochs']}` on the embedded Fashion-MNIST subset "
        "(5,400 train / 600 val / 1,000 test, 32x32); test metrics of the best validation checkpoint.",
        "",
        "| model | params (M) | test top-1 | top-5 | MCC | train + eval time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["runs"]:
        test = row["test"]
        lines.append(
            f"| {row['model']} | {row['parameters_m']:.2f} | {test['accuracy']:.4f} | {test['top5']:.4f} | "
            f"{test['mcc']:.4f} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=report.RESULTS)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "commit": report.git_commit(),
        "cpu": report.cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": report.version("torch"),
        "timm": report.version("timm"),
        "python": platform.python_version(),
        "date": report.now(),
        "epochs": args.epochs,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as work:
        for model, kwargs in MODELS.items():
            row = train(model, kwargs, args.epochs, Path(work))
            report.log(row)
            results["runs"].append(row)
    text = markdown(results)
    report.write(args.out, "vision_accuracy", results, text)
    report.log(text)


if __name__ == "__main__":
    main()
