"""Vision throughput on the GPU, in one run: images/s for inference and training of mambakit's vmamba_tiny_s1l8 beside
timm's convnext_tiny, swin_tiny_patch4_window7_224 and resnet50 (batch 128, 224x224, bf16 autocast; channels_last for
the convolutional peers, where it helps them), after checking VMamba's GPU path against the float64 CPU reference.

    PYTHONPATH=.:bench python bench/vision.py [--commit SHA] [--batch 128] [--out bench/results]

Writes bench/results/vision_<commit>.json and .md. The accuracy comparison at equal budget (CPU) is
`bench/vision_accuracy.py`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mambakit.apps.vision  # noqa: F401 - registers vmamba_* with timm
import report
import timm
import torch
import torch.nn.functional as F

from mambakit.ops import available_backends, cross_merge, cross_scan
from mambakit.ops.timing import relative_error

#: (model, channels_last) pairs timed side by side; channels_last only where timm's model gains from it.
MODELS = [
    ("vmamba_tiny_s1l8", False),
    ("convnext_tiny", True),
    ("swin_tiny_patch4_window7_224", False),
    ("resnet50", True),
]


def check_correctness() -> dict[str, float]:
    """VMamba-T on CUDA in fp32 (auto backends) against the same weights in float64 on the CPU reference backends;
    the Triton cross-scan and cross-merge against the reference."""
    torch.manual_seed(0)
    model = timm.create_model("vmamba_tiny_s1l8", scan_backend="reference").double().eval()
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = model(images)
        gpu = timm.create_model("vmamba_tiny_s1l8").cuda().eval()
        gpu.load_state_dict(model.state_dict())
        actual = gpu(images.float().cuda())
    x = torch.randn(8, 192, 56, 56, device="cuda")
    y = torch.randn(8, 4, 192, 56 * 56, device="cuda")
    return {
        "vmamba_tiny_fp32_cuda_vs_float64_cpu": relative_error(actual.cpu(), expected),
        "cross_scan_triton_vs_reference": relative_error(cross_scan(x), cross_scan(x, backend="reference")),
        "cross_merge_triton_vs_reference": relative_error(
            cross_merge(y, 56, 56), cross_merge(y, 56, 56, backend="reference")
        ),
    }


def _images_per_second(step: Callable[[], None], batch: int, warmup: int, iterations: int) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    torch.cuda.synchronize()
    return batch * iterations / (time.perf_counter() - start)


def _training_step(
    model: torch.nn.Module, batch: int, size: int, memory_format: torch.memory_format
) -> tuple[torch.Tensor, Callable[[], None]]:
    """Random images (batch, 3, size, size) on the GPU and one AdamW training step on them under bf16 autocast."""
    images = torch.randn(batch, 3, size, size, device="cuda").to(memory_format=memory_format)
    labels = torch.randint(0, 1000, (batch,), device="cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return images, train


def time_model(name: str, channels_last: bool, batch: int, size: int) -> dict[str, Any]:
    """Inference (no_grad) and training (forward, backward, AdamW step) images/s under bf16 autocast."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=1000).cuda()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    images, train = _training_step(model, batch, size, memory_format)

    def infer() -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(images)

    model.eval()
    inference = _images_per_second(infer, batch, warmup=5, iterations=20)
    model.train()
    torch.cuda.reset_peak_memory_stats()
    training = _images_per_second(train, batch, warmup=3, iterations=10)
    return {
        "model": name,
        "channels_last": channels_last,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "inference_img_s": inference,
        "train_img_s": training,
        "train_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


#: Kernel-name fragments -> the part of VMamba they belong to, for the profile's breakdown (first match wins).
KERNEL_GROUPS = [
    ("cross-scan / cross-merge", ("cross",)),
    ("selective scan", ("scan", "selective")),
    ("layer norm", ("layer_norm", "layernorm")),
    ("matrix multiply (projections, MLP)", ("gemm", "sm90_", "cutlass", "matmul", "cublas", "nvjet")),
    ("depthwise conv", ("conv", "depthwise")),
    ("copies / layout", ("copy", "transpose", "cat", "permute")),
]


def profile_vmamba(batch: int, size: int) -> dict[str, Any]:
    """Share of GPU time per part of vmamba_tiny_s1l8 in one training step (forward, backward, AdamW) under bf16
    autocast, from torch.profiler's kernel times."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = timm.create_model("vmamba_tiny_s1l8", num_classes=1000).cuda().train()
    _, train = _training_step(model, batch, size, torch.contiguous_format)

    for _ in range(3):
        train()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        train()
        torch.cuda.synchronize()
    groups: dict[str, float] = {}
    kernels = []
    for event in prof.key_averages():
        microseconds = getattr(event, "self_device_time_total", 0.0) or getattr(event, "self_cuda_time_total", 0.0)
        if microseconds <= 0:
            continue
        name = event.key.lower()
        group = next((g for g, keys in KERNEL_GROUPS if any(k in name for k in keys)), "other elementwise")
        groups[group] = groups.get(group, 0.0) + microseconds
        kernels.append((microseconds, event.key[:90], event.count))
    total = sum(groups.values())
    return {
        "step_gpu_ms": total / 1000,
        "share": {group: value / total for group, value in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"ms": us / 1000, "kernel": name, "calls": count} for us, name, count in sorted(kernels, reverse=True)[:15]
        ],
    }


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"# Vision throughput, {machine['device']} (commit {results['commit']})",
        "",
        f"torch {machine['torch']}, triton {machine['triton']}, timm {results['timm']}, {machine['date']}; batch "
        f"{results['batch']}, {results['size']}x{results['size']}, bf16 autocast; scan backends: "
        f"{results['backends']}.",
        "",
        "Correctness: " + ", ".join(f"{k} {v:.2e}" for k, v in results["correctness"].items()),
        "",
        "| model | params (M) | channels_last | inference img/s | training img/s | training peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["models"]:
        lines.append(
            f"| {row['model']} | {row['parameters_m']:.1f} | {row['channels_last']} | {row['inference_img_s']:,.0f} "
            f"| {row['train_img_s']:,.0f} | {row['train_peak_gib']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="", help="the commit measured (the GPU machine's tree has no .git)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=report.RESULTS)
    parser.add_argument("--profile-only", action="store_true", help="only the kernel-time breakdown of VMamba-T")
    args = parser.parse_args()
    if args.profile_only:
        breakdown = profile_vmamba(args.batch, args.size)
        report.write(args.out, f"vision_profile_{report.git_commit(args.commit) or 'uncommitted'}", breakdown)
        report.log(json.dumps(breakdown, indent=1))
        return
    commit = report.git_commit(args.commit)
    results: dict[str, Any] = {
        "machine": report.gpu_machine(),
        "commit": commit,
        "timm": report.version("timm"),
        "batch": args.batch,
        "size": args.size,
        "backends": {name: reason or "usable" for name, reason in available_backends("cuda").items()},
        "correctness": check_correctness(),
        "models": [],
    }
    report.log(results["correctness"])
    for name, channels_last in MODELS:
        row = time_model(name, channels_last, args.batch, args.size)
        report.log(row)
        results["models"].append(row)
        torch.cuda.empty_cache()
    text = markdown(results)
    report.write(args.out, f"vision_{commit or 'uncommitted'}", results, text)
    report.log(text)


if __name__ == "__main__":
    main()
