"""Genomics benchmark on the embedded real data, mambakit beside classical baselines trained on the same split.

1. Classification, Oct4 vs Mafk ChIP-seq binding sites (200 bp; seeded stratified 80/10/10 split): test accuracy
   and AUROC of mambakit classifiers trained through `mambakit.train.fit` (best validation checkpoint), and of
   logistic regression on k-mer frequencies for k = 1..6 (regularisation chosen on validation).
2. Next-base prediction on the C. diphtheriae chromosome (last 5 % held out as test, the 5 % before as
   validation): bits per base of a mambakit causal LM, of an order-k Markov model (k and smoothing chosen on
   validation) and of xz (the held-out bases alone, and given the training bases as a preset dictionary-like
   prefix: size(train + test) - size(train)).

    python bench/genomics.py [--preset cpu|gpu] [--device auto|cpu|cuda] [--out bench/results]

Writes genomics.json (every number, the settings, device and versions) and genomics.md (the tables). Needs
scikit-learn for the k-mer baseline (pip install scikit-learn); the bench is not part of the package.
"""

from __future__ import annotations

import argparse
import json
import lzma
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mambakit.apps.genomics.cli import DOMAIN
from mambakit.apps.genomics.cli import PRESETS as CLI_PRESETS
from mambakit.apps.genomics.models import create_model, genomics_config
from mambakit.apps.genomics.prepare import GENOME, classification_splits, pretraining_splits
from mambakit.apps.genomics.readers import read_sequences, split_genome
from mambakit.apps.genomics.tasks import ClassifyTask, PretrainTask
from mambakit.apps.genomics.tokenizer import DNATokenizer

from mambakit import __version__
from mambakit.models import load_model
from mambakit.train import EvalConfig, TrainConfig, evaluate, fit

sys.path.insert(0, str(Path(__file__).parent))
import report  # beside this script, importable once its folder is on the path


def _cli_settings(task: str) -> dict[str, Any]:
    """The CLI's training defaults for `task`, less what this script sets itself."""
    return {k: v for k, v in DOMAIN.task(task).defaults.items() if k not in ("warmup_ratio", "save_every", "log_every")}


#: Model and training settings per preset: "cpu" finishes in minutes on a laptop, "gpu" is the real run.
PRESETS: dict[str, dict[str, Any]] = {
    # What `mambakit train genomics [--task pretrain]` does by default: the tiny preset and the CLI's settings.
    "cpu": {
        "classify_models": {"causal": {}, "rc_equivariant": {"rc_equivariant": True}},
        "model": CLI_PRESETS["tiny"],
        "classify_train": _cli_settings("classify"),
        "lm_model": CLI_PRESETS["tiny"],
        "lm_train": _cli_settings("pretrain"),
        "window": 1024,
    },
    "gpu": {
        "classify_models": {
            "causal": {},
            "bimamba": {"bidirectional": True},
            "rc_equivariant": {"rc_equivariant": True},
            "rc_equivariant_bimamba": {"rc_equivariant": True, "bidirectional": True},
        },
        "model": {"d_model": 128, "n_layer": 6, "d_state": 16},
        "classify_train": {"epochs": 15, "batch_size": 64, "lr": 2e-3, "eval_every": 100},
        "lm_model": {"d_model": 128, "n_layer": 6, "d_state": 16},
        "lm_train": {"max_steps": 4000, "batch_size": 16, "lr": 2e-3, "eval_every": 250},
        "window": 4096,
    },
}
SEED = 0
MAX_MARKOV_ORDER = 11  # 4**12 counts (128 MB) at the largest order
BASES = "ACGT"


# --- baselines ----------------------------------------------------------------------------------------------


def _base_codes(ids: np.ndarray) -> np.ndarray:
    """Tokenizer ids of A, C, G, T -> 0..3; anything else (N) -> -1."""
    codes = np.full(len(ids), -1, dtype=np.int64)
    for code, token in enumerate(DNATokenizer.base_token_ids):
        codes[ids == token] = code
    return codes


def _kmer_index(codes: np.ndarray, k: int) -> np.ndarray:
    """Base-4 index of every k-mer starting at 0..n-k; -1 where it holds an N."""
    n = len(codes) - k + 1
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    index = np.zeros(n, dtype=np.int64)
    valid = np.ones(n, dtype=bool)
    for j in range(k):
        part = codes[j : j + n]
        index = index * 4 + np.maximum(part, 0)
        valid &= part >= 0
    return np.where(valid, index, -1)


def kmer_features(sequences: list[np.ndarray], k: int) -> np.ndarray:
    """k-mer frequency vectors (n, 4**k), each row summing to 1 (or 0 for a sequence of Ns)."""
    features = np.zeros((len(sequences), 4**k), dtype=np.float32)
    for row, ids in enumerate(sequences):
        index = _kmer_index(_base_codes(ids), k)
        counts = np.bincount(index[index >= 0], minlength=4**k)
        features[row] = counts / max(counts.sum(), 1)
    return features


def kmer_logistic_regression(splits: Any) -> list[dict[str, float]]:
    """For k = 1..6: logistic regression on k-mer frequencies, C chosen on validation accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    rows = []
    for k in range(1, 7):
        x = {name: kmer_features(getattr(splits, name).ids, k) for name in ("train", "val", "test")}
        y = {name: getattr(splits, name).labels for name in ("train", "val", "test")}
        scaler = StandardScaler().fit(x["train"])
        x = {name: scaler.transform(value) for name, value in x.items()}
        best = None
        for c in (0.001, 0.01, 0.1, 1.0):
            model = LogisticRegression(C=c, max_iter=2000).fit(x["train"], y["train"])
            score = model.score(x["val"], y["val"])
            if best is None or score > best[0]:
                best = (score, c, model)
        _, c, model = best
        probabilities = model.predict_proba(x["test"])[:, 1]
        rows.append(
            {
                "k": k,
                "C": c,
                "val_accuracy": best[0],
                "test_accuracy": model.score(x["test"], y["test"]),
                "test_auroc": roc_auc_score(y["test"], probabilities),
            }
        )
        print(
            f"k-mer LR k={k}: test accuracy {rows[-1]['test_accuracy']:.4f} auroc {rows[-1]['test_auroc']:.4f}",
            flush=True,
        )
    return rows


def _markov_bits(train: np.ndarray, evaluate_on: np.ndarray, order: int, alpha: float) -> float:
    """Bits per base of an order-`order` Markov model with additive smoothing `alpha`, counted on `train` and
    scored on every base of `evaluate_on` that has `order` bases of context before it (N-free)."""

    def contexts_and_next(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = _kmer_index(codes, order + 1)
        valid = index >= 0
        return index[valid] // 4, index[valid] % 4

    context, following = contexts_and_next(train)
    counts = np.bincount(context * 4 + following, minlength=4 ** (order + 1)).reshape(-1, 4).astype(np.float64)
    context, following = contexts_and_next(evaluate_on)
    row = counts[context]
    probability = (row[np.arange(len(following)), following] + alpha) / (row.sum(1) + 4 * alpha)
    return float(-np.log2(probability).mean())


def markov_baseline(codes: dict[str, np.ndarray]) -> dict[str, Any]:
    """Order k in 0..MAX_MARKOV_ORDER and smoothing alpha chosen on validation; test bits per base."""
    grid = [
        (order, alpha, _markov_bits(codes["train"], codes["val"], order, alpha))
        for order in range(MAX_MARKOV_ORDER + 1)
        for alpha in (0.01, 0.1, 0.5, 1.0)
    ]
    order, alpha, val_bits = min(grid, key=lambda item: item[2])
    test_bits = _markov_bits(codes["train"], codes["test"], order, alpha)
    print(f"Markov order {order} alpha {alpha}: val {val_bits:.4f} test {test_bits:.4f} bits/base", flush=True)
    return {
        "order": order,
        "alpha": alpha,
        "val_bits_per_base": val_bits,
        "test_bits_per_base": test_bits,
        "val_grid": [{"order": o, "alpha": a, "val_bits_per_base": b} for o, a, b in grid],
    }


def xz_baseline(train_text: bytes, test_text: bytes) -> dict[str, float]:
    """xz -9e bits per base of the test bases alone, and given the training bases (conditional size)."""

    bits = report.compressed_bits(
        lambda data: len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)), train_text, test_text
    )
    alone, conditional = bits["alone"], bits["given_train"]
    print(f"xz: {alone:.4f} bits/base alone, {conditional:.4f} given the training bases", flush=True)
    return {"test_bits_per_base": alone, "test_bits_per_base_given_train": conditional}


# --- mambakit -----------------------------------------------------------------------------------------------


def _train_and_test(
    task: Any,
    model: Any,
    splits: Any,
    train_settings: dict[str, Any],
    device: str,
    out_dir: Path,
    **config_changes: Any,
) -> dict[str, Any]:
    """fit on train (validating on val), then the best validation checkpoint's test metrics."""
    config = TrainConfig(
        out_dir=out_dir,
        seed=SEED,
        device=device,
        warmup_ratio=0.05,
        save_every=0,
        log_every=50,
        **train_settings,
        **config_changes,
    )
    tokenizer = DNATokenizer()
    start = time.perf_counter()
    result = fit(
        model, task, splits.train, splits.val, config=config, extra_files={"tokenizer.json": tokenizer.to_json()}
    )
    seconds = time.perf_counter() - start
    best = load_model(out_dir / "best")
    test = evaluate(best, task, splits.test, config.eval_config())
    return {
        "train_seconds": seconds,
        "steps": result.step,
        "best_step": result.best_step,
        "val": result.metrics,
        "test": test,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def mambakit_classifiers(splits: Any, preset: dict[str, Any], device: str, work: Path) -> dict[str, Any]:
    tokenizer = DNATokenizer()
    results = {}
    for name, options in preset["classify_models"].items():
        torch.manual_seed(SEED)
        model = create_model("classify", genomics_config(tokenizer, **preset["model"], **options), num_labels=2)
        task = ClassifyTask(tokenizer)
        results[name] = _train_and_test(task, model, splits, preset["classify_train"], device, work / name)
        if not options.get("rc_equivariant"):
            best = load_model(work / name / "best")
            results[name]["test_conjoined"] = evaluate(
                best, ClassifyTask(tokenizer, conjoin=True), splits.test, EvalConfig(device=device)
            )
        test = results[name]["test"]
        print(f"mambakit {name}: test accuracy {test['accuracy']:.4f} auroc {test['auroc']:.4f}", flush=True)
    return results


def mambakit_lm(preset: dict[str, Any], device: str, work: Path) -> dict[str, Any]:
    tokenizer = DNATokenizer()
    splits = pretraining_splits(window=preset["window"], seed=SEED, rc_augment=True)
    torch.manual_seed(SEED)
    model = create_model("pretrain", genomics_config(tokenizer, **preset["lm_model"]))
    result = _train_and_test(PretrainTask(tokenizer), model, splits, preset["lm_train"], device, work / "lm")
    print(f"mambakit LM: test {result['test']['bits_per_base']:.4f} bits/base", flush=True)
    return {**result, "window": preset["window"], "rc_augment": True}


# --- report -------------------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Genomics benchmark ({report['preset']} preset, {report['device']})",
        "",
        "## Oct4 vs Mafk binding sites: test set (800 sequences of 200 bp)",
        "",
        "| model | test accuracy | test AUROC |",
        "|---|---|---|",
    ]
    for name, result in report["classification"]["mambakit"].items():
        lines.append(
            f"| mambakit {name} ({result['parameters']:,} parameters) | {result['test']['accuracy']:.4f} | "
            f"{result['test']['auroc']:.4f} |"
        )
        if "test_conjoined" in result:
            conjoined = result["test_conjoined"]
            lines.append(
                f"| mambakit {name}, RC-conjoined at inference | {conjoined['accuracy']:.4f} | "
                f"{conjoined['auroc']:.4f} |"
            )
    for row in report["classification"]["kmer_logistic_regression"]:
        lines.append(
            f"| {row['k']}-mer logistic regression (C={row['C']}) | {row['test_accuracy']:.4f} | "
            f"{row['test_auroc']:.4f} |"
        )
    lm, markov, xz = report["lm"]["mambakit"], report["lm"]["markov"], report["lm"]["xz"]
    lines += [
        "",
        f"## C. diphtheriae NCTC11397: held-out {report['lm']['test_bases']:,} bases",
        "",
        "| model | test bits per base |",
        "|---|---|",
        f"| mambakit causal LM ({lm['parameters']:,} parameters, {lm['steps']} steps, window {lm['window']}) | "
        f"{lm['test']['bits_per_base']:.4f} |",
        f"| order-{markov['order']} Markov (alpha {markov['alpha']}, chosen on validation) | "
        f"{markov['test_bits_per_base']:.4f} |",
        f"| xz -9e, held-out bases alone | {xz['test_bits_per_base']:.4f} |",
        f"| xz -9e, given the training bases | {xz['test_bits_per_base_given_train']:.4f} |",
        "| uniform over A, C, G, T | 2.0000 |",
        "",
        f"mambakit {report['versions']['mambakit']} (commit {report['commit']}), "
        f"torch {report['versions']['torch']}, python "
        f"{report['versions']['python']}; seed {SEED}. mambakit scores every base of each test window but "
        f"the first (no context); the Markov model scores the test bases after its first `order`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--part",
        choices=("all", "classification", "lm"),
        default="all",
        help="run one part and merge it into an existing genomics.json (long runs in two goes)",
    )
    parser.add_argument("--out", type=Path, default=report.RESULTS)
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    use_cuda = args.device != "cpu" and torch.cuda.is_available()
    earlier = args.out / "genomics.json"
    results: dict[str, Any] = json.loads(earlier.read_text()) if args.part != "all" and earlier.is_file() else {}
    results.update(
        {
            "preset": args.preset,
            "settings": preset,
            "device": torch.cuda.get_device_name() if use_cuda else "CPU",
            "commit": report.git_commit(),
            "versions": {
                "mambakit": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "numpy": np.__version__,
            },
        }
    )
    with tempfile.TemporaryDirectory() as work:
        if args.part in ("all", "classification"):
            results["classification"] = classification_part(preset, args.device, Path(work))
        if args.part in ("all", "lm"):
            results["lm"] = lm_part(preset, args.device, Path(work))
    complete = "classification" in results and "lm" in results
    report.write(args.out, "genomics", results, markdown(results) if complete else None, default=float)
    if complete:
        print(markdown(results))


def classification_part(preset: dict[str, Any], device: str, work: Path) -> dict[str, Any]:
    splits = classification_splits(seed=SEED)
    sizes = {name: len(getattr(splits, name)) for name in ("train", "val", "test")}
    return {
        "classes": list(splits.labels),
        "sizes": sizes,
        "kmer_logistic_regression": kmer_logistic_regression(splits),
        "mambakit": mambakit_classifiers(splits, preset, device, work / "classify"),
    }


def lm_part(preset: dict[str, Any], device: str, work: Path) -> dict[str, Any]:
    genome = read_sequences(GENOME)[0]
    genome_ids = DNATokenizer().encode(genome.sequence)
    regions = split_genome({genome.name: len(genome_ids)}, seed=SEED)
    codes = {
        split: _base_codes(np.concatenate([genome_ids[r.start : r.end] for r in parts]))
        for split, parts in regions.items()
    }
    text = {split: "".join(BASES[c] for c in code).encode() for split, code in codes.items()}
    return {
        "test_bases": len(codes["test"]),
        "markov": markov_baseline(codes),
        "xz": xz_baseline(text["train"], text["test"]),
        "mambakit": mambakit_lm(preset, device, work),
    }


if __name__ == "__main__":
    main()
