"""Bits per byte of text language models after a fixed budget, beside xz -9e and zstd -19 on the same held-out
text (#13): a byte-level LM and a BPE LM (a tokenizer trained on the training text) through `mambakit train
text`, on the default corpus (this Python's top-level standard-library modules, 2.8 MB) or, with `--corpus
stdlib`, every .py of the standard library (its tests included, site-packages not; about 30 MB, bytes that are not
UTF-8 replaced); every 20th document is held out.

    PYTHONPATH=.:bench .venv/bin/python bench/text.py [--max-steps 600] [--eval-every N] [--device cpu]
        [--corpus default|stdlib] [--out bench/results]

The GPU presets overfit the default corpus within a few passes (bench/results/text_cuda.md); on `stdlib`, 1,500
steps of 16 x 1,024 tokens are about one pass.

The compressors are scored alone and given the training text (what they add after it: the fair match for a model
trained on that text). Writes text_<device>.json and .md."""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import subprocess
import sysconfig
import time
from pathlib import Path
from typing import Any

import report
from mambakit.apps.text.cli import DOMAIN, TextOptions
from mambakit.apps.text.data import default_corpus_files, read_documents, training_documents

from mambakit.cli_support import resolve_device, train_domain
from mambakit.domains import RunOptions

CORPUS_NAMES = {
    "default": "standard-library modules (the default corpus)",
    "stdlib": "standard-library sources (every .py)",
}


def corpus_files(corpus: str) -> list[Path]:
    """The files of `corpus`: none for "default" (the CLI's own default corpus), every .py of this Python's standard
    library but site-packages for "stdlib", sorted."""
    if corpus == "default":
        return []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skipped = {"site-packages", "dist-packages"}
    return sorted(path for path in stdlib.rglob("*.py") if not skipped & set(path.relative_to(stdlib).parts))


def _errors(corpus: str) -> str:
    # A few of the standard library's test files are deliberately not UTF-8.
    return "replace" if corpus == "stdlib" else "strict"


def _zstd_size(data: bytes) -> int:
    # --long: a window over the whole training text, so the conditional size can use all of it.
    return len(
        subprocess.run(["zstd", "-19", "--long=27", "-c", "-q"], input=data, capture_output=True, check=True).stdout
    )


def _xz_size(data: bytes) -> int:
    return len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))


def _train(name: str, tokenizer: str | None, args: argparse.Namespace, device: str) -> dict[str, Any]:
    shutil.rmtree(args.work / name, ignore_errors=True)  # each measurement starts from scratch
    run = RunOptions(
        task="lm",
        out=args.work / name,
        data=corpus_files(args.corpus),
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        device=device,
        preset=args.preset,
        train={"eval_every": args.eval_every or args.max_steps, "save_every": args.max_steps},
    )
    started = time.perf_counter()
    options = TextOptions(seq_len=args.seq_len, tokenizer=tokenizer, errors=_errors(args.corpus))
    metrics = train_domain(DOMAIN, run, options)
    seconds = time.perf_counter() - started
    report.log(f"{name}: {metrics} in {seconds:.0f} s")
    curve = [
        {"step": record["step"], "bits_per_byte": record["eval_bits_per_byte"]}
        for record in map(json.loads, (args.work / name / "metrics.jsonl").read_text().splitlines())
        if "eval_bits_per_byte" in record
    ]
    return {"tokenizer": tokenizer or "bytes", "seconds": round(seconds, 1), **metrics, "eval_curve": curve}


def report_lines(data: dict[str, Any], device: str) -> list[str]:
    """The markdown report of one run's results (`data`, as written to text_DEVICE.json)."""
    settings, corpus = data["settings"], data["corpus"]
    lines = [
        f"# Text: bits per byte on held-out {corpus.get('name', 'standard-library modules')} ({device}, commit "
        f"{data['commit']})",
        "",
        f"{corpus['training_bytes']:,} training bytes, {corpus['held_out_bytes']:,} held-out bytes (every 20th "
        f"document); models: preset {settings['preset']}, {settings['max_steps']} steps of {settings['batch_size']} x "
        f"{settings['seq_len']} tokens."
        + (
            f" The best is the lowest of the evaluations every {settings['eval_every']} steps: the checkpoint the "
            "CLI keeps as `best`."
            if settings.get("eval_every", "0") not in ("0", "None")
            else ""
        ),
        "",
        "| what | bits per byte | best (step) | notes |",
        "|---|---|---|---|",
    ]
    for name, bits in data["compressors"].items():
        lines.append(f"| {name} | {bits['given_train']:.3f} | | given the training text; alone {bits['alone']:.3f} |")
    for name, metrics in data["models"].items():
        curve = metrics.get("eval_curve") or []
        best = min(curve, key=lambda point: point["bits_per_byte"]) if curve else None
        shown = f"{best['bits_per_byte']:.3f} ({best['step']})" if best else ""
        lines.append(
            f"| {name} | {metrics['bits_per_byte']:.3f} | {shown} | {metrics['seconds']:.0f} s of training"
            + (f"; {metrics['bits_per_token']:.3f} bits per token" if "bits_per_token" in metrics else "")
            + " |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--corpus", choices=("default", "stdlib"), default="default")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (the curve is saved)")
    parser.add_argument("--bpe-vocab", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-text"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--commit", default="")
    args = parser.parse_args()
    device = resolve_device(args.device)
    documents = read_documents(corpus_files(args.corpus) or default_corpus_files(), errors=_errors(args.corpus))
    train_text = "".join(training_documents(documents)).encode()
    held = "".join(text for i, text in enumerate(documents) if i % 20 == 19).encode()
    compressors = {"xz -9e": report.compressed_bits(_xz_size, train_text, held)}
    if shutil.which("zstd"):  # the zstd program is not on every machine (xz is Python's own lzma)
        compressors["zstd -19 --long=27"] = report.compressed_bits(_zstd_size, train_text, held)
    else:
        report.log("zstd is not installed here: its row is left out")
    models = {
        "byte LM": _train("bytes", None, args, device),
        f"BPE LM ({args.bpe_vocab})": _train("bpe", f"train:{args.bpe_vocab}", args, device),
    }
    data = {
        "machine": report.cpu_name() if device == "cpu" else report.gpu_machine(),
        "torch": report.version("torch"),
        "commit": report.git_commit(args.commit),
        "date": report.now(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "corpus": {
            "name": CORPUS_NAMES[args.corpus],
            "training_bytes": len(train_text),
            "held_out_bytes": len(held),
            "documents": len(documents),
        },
        "compressors": compressors,
        "models": models,
    }
    lines = report_lines(data, device)
    report.write(args.out, f"text_{device}", data, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
