"""Audio quality and generation speed, in one run, on the FSDD test split (recordings with index 0-4: 300 clips,
1,034,030 samples, 8-bit mu-law as torchaudio encodes it):

1. bits per sample of each language-model checkpoint, every sample of every clip scored from its start with one
   silence sample as context (conditioned on the clip's digit when the model is), beside an order-2 Markov model
   with add-0.3 smoothing fitted on the train recordings (index 5-49) and xz -9 on the test stream, both computed
   here (../shared/notes/audio.md measured 5.129 and 5.428 bits with the same protocol);
2. test accuracy of the classifier checkpoint (logistic regression on log-mel features: 98.0%, from the notes);
3. class-conditional generation scored by that classifier: the share of generated clips (temperature 1, top-p 1,
   as in SaShiMi's SC09 protocol) that it labels as the digit asked for;
4. generated samples per second at batch 1, 16 and 64 (CUDA graphs and eager on a GPU; eager on a CPU).

    PYTHONPATH=.:bench python bench/audio.py --lm CKPT [--lm CKPT2] --classifier CKPT [--device cuda] [--out DIR]

Writes <out>/audio_<commit>_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import lzma
import platform
from pathlib import Path
from typing import Any

import numpy as np
import report
import torch
from mambakit.apps.audio.data import AudioClassificationDataset, embedded_dataset, silence_code
from mambakit.apps.audio.generate import generate_audio
from mambakit.apps.audio.models import AudioClassifier, AudioLM

from mambakit.models import SamplingConfig, load_model

MARKOV_ALPHA = 0.3
SILENCE = silence_code("mu-law")


def fsdd_codes() -> tuple[list[np.ndarray], list[int], list[np.ndarray], list[int]]:
    """(train codes, train digits, test codes, test digits): train = index 5-49, test = index 0-4."""
    data = embedded_dataset()
    train_ids = data.splits["train"] + data.splits["val"]
    pick = lambda ids: ([data.records[i].audio for i in ids], [int(data.records[i].label) for i in ids])  # noqa: E731
    return (*pick(train_ids), *pick(data.splits["test"]))


def markov_bits(train: list[np.ndarray], test: list[np.ndarray], alpha: float = MARKOV_ALPHA) -> float:
    """Order-2 Markov model, add-alpha, each clip from two silence samples of context."""
    counts = np.zeros(256**3, dtype=np.float64)
    for clip in train:
        padded = np.concatenate([[SILENCE, SILENCE], clip]).astype(np.int64)
        np.add.at(counts, padded[:-2] * 65536 + padded[1:-1] * 256 + padded[2:], 1)
    counts = counts.reshape(65536, 256)
    totals = counts.sum(1)
    bits, samples = 0.0, 0
    for clip in test:
        padded = np.concatenate([[SILENCE, SILENCE], clip]).astype(np.int64)
        context = padded[:-2] * 256 + padded[1:-1]
        p = (counts[context, padded[2:]] + alpha) / (totals[context] + 256 * alpha)
        bits -= np.log2(p).sum()
        samples += len(clip)
    return bits / samples


def xz_bits(test: list[np.ndarray]) -> float:
    stream = np.concatenate(test).astype(np.uint8).tobytes()
    return 8 * len(lzma.compress(stream, preset=9 | lzma.PRESET_EXTREME)) / len(stream)


@torch.no_grad()
def lm_bits(model: AudioLM, clips: list[np.ndarray], digits: list[int], device: str, batch: int = 32) -> float:
    """Bits per sample over every sample of `clips`, each from one silence sample of context."""
    order = np.argsort([len(c) for c in clips])
    conditioned = model.labels is not None
    total, count = 0.0, 0
    for start in range(0, len(order), batch):
        chosen = order[start : start + batch]
        length = max(len(clips[i]) for i in chosen) + 1
        ids = torch.full((len(chosen), length), SILENCE, dtype=torch.long)
        mask = torch.zeros(len(chosen), length, dtype=torch.bool)
        for row, i in enumerate(chosen):
            ids[row, 1 : len(clips[i]) + 1] = torch.from_numpy(clips[i].astype(np.int64))
            mask[row, 1 : len(clips[i]) + 1] = True
        ids = ids.to(device)
        classes = None
        if conditioned:
            assert model.labels is not None
            classes = torch.tensor([model.labels.index(str(digits[i])) for i in chosen], device=device)
        logits = model(ids, class_ids=classes).logits.float()
        log_probs = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        total -= log_probs[mask[:, 1:].to(device)].sum().item()
        count += int(mask.sum())
    return total / count / np.log(2)


@torch.no_grad()
def classify(model: AudioClassifier, clips: list[np.ndarray], device: str, crop: int, batch: int = 64) -> np.ndarray:
    """Predicted class index per clip (centred `crop` window, as `mambakit predict audio` does)."""
    from mambakit.apps.audio.data import AudioRecord

    records = [AudioRecord(c.astype(np.uint8), None, f"clip {i}", None, 8000, "mu-law") for i, c in enumerate(clips)]
    dataset = AudioClassificationDataset(records, None, crop)
    predictions = []
    for start in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
        ids = torch.stack([item["input_ids"] for item in items]).to(device)
        mask = torch.stack([item["attention_mask"] for item in items]).to(device)
        predictions.append(model(ids, mask).logits.argmax(-1).cpu())
    return torch.cat(predictions).numpy()


def generated_digits(
    model: AudioLM, classifier: AudioClassifier, per_digit: int, seconds: float, device: str, crop: int
) -> dict[str, Any]:
    """Generate `per_digit` clips of each digit; the classifier's verdicts."""
    assert model.labels is not None and classifier.labels is not None
    asked = [d for d in range(10) for _ in range(per_digit)]
    class_ids = torch.tensor([model.labels.index(str(d)) for d in asked], device=device)
    result = generate_audio(
        model, len(asked), int(seconds * model.config.sample_rate), SILENCE, SamplingConfig(), class_ids, seed=0
    )
    predicted = classify(classifier, list(result.ids.numpy().astype(np.uint8)), device, crop)
    labels = np.array([int(classifier.labels[p]) for p in predicted])
    matches = labels == np.array(asked)
    return {
        "clips": len(asked),
        "seconds_each": seconds,
        "share_labelled_as_asked": float(matches.mean()),
        "per_digit": {str(d): float(matches[np.array(asked) == d].mean()) for d in range(10)},
        "generation_samples_per_s": result.samples_per_second,
    }


def speeds(model: AudioLM, device: str, batches: list[int], seconds: float) -> list[dict[str, Any]]:
    rows = []
    length = int(seconds * model.config.sample_rate)
    modes = [True, False] if device == "cuda" else [False]
    for batch in batches:
        class_ids = None if model.labels is None else torch.arange(batch, device=device) % len(model.labels)
        for graph in modes:
            generate_audio(
                model, batch, min(length, 256), SILENCE, SamplingConfig(), class_ids, seed=0, cuda_graph=graph
            )
            result = generate_audio(
                model, batch, length, SILENCE, SamplingConfig(), class_ids, seed=1, cuda_graph=graph
            )
            rate = result.samples_per_second
            rows.append(
                {
                    "batch": batch,
                    "cuda_graph": graph,
                    "samples_per_s": rate,
                    "real_time_factor_8khz": rate / 8000,
                    "decode_samples_per_s": result.decode_samples_per_second,
                    "samples_each": length,
                }
            )
            report.log(rows[-1])
    return rows


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Audio on FSDD, {results['machine']['device']} (commit {results['commit']})",
        "",
        f"torch {results['machine']['torch']}, {results['machine']['date']}. Test split: recordings 0-4 "
        f"({results['test_clips']} clips, {results['test_samples']:,} samples), 8-bit mu-law (torchaudio).",
        "",
        "| model | parameters | bits/sample (test) |",
        "|---|---|---|",
        f"| order-2 Markov, add-{MARKOV_ALPHA} (train 5-49) | - | {results['markov_bits']:.3f} |",
        f"| xz -9e, test stream | - | {results['xz_bits']:.3f} |",
    ]
    for row in results["language_models"]:
        lines.append(f"| {row['checkpoint']} | {row['parameters']:,} | {row['bits_per_sample']:.3f} |")
    if "classifier" in results:
        c = results["classifier"]
        lines += [
            "",
            f"Classifier {c['checkpoint']}: test accuracy {c['test_accuracy']:.2%} (logistic regression on log-mel "
            "features: 98.00%, ../shared/notes/audio.md).",
        ]
    for row in results.get("conditional_generation", []):
        lines.append(
            f"Conditional generation with {row['checkpoint']}: {row['share_labelled_as_asked']:.1%} of "
            f"{row['clips']} generated {row['seconds_each']:g}-s clips are labelled as the digit asked for."
        )
    lines += [
        "",
        "samples/s: the whole call (capture and prefill included); decode: the sampling loop alone.",
        "",
        "| model | batch | CUDA graphs | samples/s | x real time at 8 kHz | decode samples/s |",
        "|---|---|---|---|---|---|",
    ]
    for row in results.get("speed", []):
        decode = row.get("decode_samples_per_s")
        lines.append(
            f"| {row['checkpoint']} | {row['batch']} | {row['cuda_graph']} | {row['samples_per_s']:,.0f} | "
            f"{row['real_time_factor_8khz']:.2f} | {'-' if decode is None else f'{decode:,.0f}'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", type=Path, action="append", default=[], help="language-model checkpoint (repeat)")
    parser.add_argument("--classifier", type=Path, help="classifier checkpoint")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,16,64", help="batch sizes to time generation at ('': none)")
    parser.add_argument("--speed-seconds", type=float, default=1.0)
    parser.add_argument("--per-digit", type=int, default=20, help="generated clips per digit to score")
    parser.add_argument("--skip-nll", action="store_true", help="only speed (and generation scoring)")
    parser.add_argument("--out", type=Path, default=report.RESULTS)
    parser.add_argument("--commit", default="")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    commit = report.git_commit(args.commit)
    machine = (
        report.gpu_machine()
        if args.device == "cuda"
        else {
            "device": f"CPU: {report.cpu_name()}, {torch.get_num_threads()} threads",
            "torch": report.version("torch"),
            "python": platform.python_version(),
            "date": report.now(),
        }
    )
    train, _, test, test_digits = fsdd_codes()
    results: dict[str, Any] = {
        "machine": machine,
        "commit": commit,
        "test_clips": len(test),
        "test_samples": int(sum(len(c) for c in test)),
        "markov_bits": markov_bits(train, test),
        "xz_bits": xz_bits(test),
        "language_models": [],
        "speed": [],
    }
    report.log({k: results[k] for k in ("test_samples", "markov_bits", "xz_bits")})
    models = {path: load_model(path, device=args.device).eval() for path in args.lm}
    for path, model in models.items():
        parameters = sum(p.numel() for p in model.parameters())
        bits = float("nan") if args.skip_nll else lm_bits(model, test, test_digits, args.device)
        results["language_models"].append({"checkpoint": str(path), "parameters": parameters, "bits_per_sample": bits})
        report.log(results["language_models"][-1])
    if args.classifier:
        classifier = load_model(args.classifier, device=args.device).eval()
        crop = 8000
        predicted = classify(classifier, test, args.device, crop)
        accuracy = float((np.array([int(classifier.labels[p]) for p in predicted]) == np.array(test_digits)).mean())
        results["classifier"] = {"checkpoint": str(args.classifier), "test_accuracy": accuracy}
        report.log(results["classifier"])
        results["conditional_generation"] = [
            {"checkpoint": str(path), **generated_digits(model, classifier, args.per_digit, 1.0, args.device, crop)}
            for path, model in models.items()
            if model.labels is not None
        ]
        report.log(results["conditional_generation"])
    batches = [int(b) for b in args.batches.split(",") if b]
    for path, model in list(models.items())[:1]:
        results["speed"] += [
            {"checkpoint": str(path), **row} for row in speeds(model, args.device, batches, args.speed_seconds)
        ]
    text = markdown(results)
    report.write(args.out, f"audio_{commit or 'uncommitted'}_{args.device}", results, text)
    report.log(text)


if __name__ == "__main__":
    main()
