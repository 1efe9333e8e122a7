"""Model-level GPU benchmarks, mambakit beside mamba-ssm with identical weights in the same run: one Mamba mixer,
a 130M language-model training step and greedy generation with CUDA graphs.

    python bench/gpu_model.py [--out DIR] [--only block,train,generation]

bench/gpu.py imports `bench_block`, `bench_lm_train` and `bench_generation`. Each checks correctness before it
times anything and returns rows {"name", "shape", "backend", "value", "unit", "correct", "note", "reference"}:
`value` is None, with the reason in `note`, for a case that could not run (mamba-ssm not importable, out of
memory); `correct` compares mambakit with mamba-ssm where that applies; `reference` is mamba-ssm 2.3.2.post1's
number on one H100 (/work/shared/device/README.md). mambakit runs once per scan backend: its own `triton`
kernels (the mixer fused, mambakit.ops.mamba_inner, and once more through the separate ops in the block and
training benchmarks), and `auto`, which picks mamba-ssm's kernels where they are installed. The table is printed
last and everything goes to DIR/gpu_model_results.json (DIR: $OUT, else bench/results).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from triton.testing import do_bench

from mambakit.models import MambaConfig, MambaLMHeadModel, SamplingConfig, generate
from mambakit.nn import Mamba
from mambakit.ops import ScanShape, available_backends, resolve_backend
from mambakit.ops.measured import layer_scan_shape
from mambakit.ops.timing import relative_error
from mambakit.train.step_graph import StepGraph

sys.path.insert(0, str(Path(__file__).parent))
import report  # beside this script, importable once its folder is on the path
from report import log

DEVICE = torch.device("cuda")
BF16 = torch.bfloat16
#: mamba-ssm 2.3.2.post1 on one H100 80GB (torch 2.11), the anchors of the same cases.
REFERENCE = {
    "block_fwd": 0.73,
    "block_fwd_bwd": 3.24,
    "lm_train": 151_000,
    "generation_b1": 988,
    "generation_b64": 56_241,
}
#: Relative errors (norm of the difference over the norm of mamba-ssm's tensor) accepted as agreement.
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}


def mamba_ssm_unavailable() -> str | None:
    """None when mamba_ssm imports, else why not (one line)."""
    try:
        import mamba_ssm  # noqa: F401 - its __init__ imports every module, generation (and transformers) included
    except Exception as error:  # an ABI mismatch raises more than ImportError
        reason = f"cannot import mamba_ssm ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        if "transformers" in f"{error} {getattr(error, 'name', None)}":
            reason += (
                "; mamba_ssm.utils.generation needs GenerateDecoderOnlyOutput and TextStreamer from "
                "transformers.generation and mamba_ssm.utils.hf needs transformers.utils.hub.cached_file: "
                "install a transformers version that has them (5.23 does)"
            )
        return reason
    return None


def mamba_ssm_versions() -> dict[str, str]:
    """Versions of mamba_ssm and causal_conv1d, or why they are missing (without causal_conv1d mamba-ssm's Mamba
    takes its slower unfused path)."""
    versions = {}
    for name in ("mamba_ssm", "causal_conv1d"):
        try:
            versions[name] = __import__(name).__version__
        except Exception as error:
            versions[name] = f"missing ({type(error).__name__}: {error})"
    return versions


def _row(
    name: str,
    shape: str,
    backend: str,
    value: float | None,
    unit: str,
    correct: dict | None = None,
    note: str | None = None,
    reference: float | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "shape": shape,
        "backend": backend,
        "value": value,
        "unit": unit,
        "correct": correct,
        "note": note,
        "reference": reference,
    }


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def _measure(measure: Callable[[], float]) -> tuple[float | None, str | None]:
    """measure() or (None, why it failed): one case's failure (out of memory above all) leaves the others."""
    try:
        return measure(), None
    except torch.cuda.OutOfMemoryError:
        return None, "out of memory"
    except Exception as error:
        return None, f"{type(error).__name__}: {error}"[:300]
    finally:
        _free()


@contextlib.contextmanager
def _exact_fp32() -> Iterator[None]:
    """fp32 matmuls and convolutions without TF32, for the fp32 comparison."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _bf16_params(module: nn.Module) -> nn.Module:
    """A copy in bf16 as mamba-ssm builds it with dtype=bfloat16: A_log and D stay fp32."""
    module = copy.deepcopy(module)
    for name, parameter in module.named_parameters():
        if name.rsplit(".", 1)[-1] not in ("A_log", "D"):
            parameter.data = parameter.data.to(BF16)
    return module


def _mambakit_backends(op: str, shape: ScanShape | None = None) -> dict[str, str]:
    """Label -> scan_backend for the mambakit runs: `triton`, `cuda` where it can run (for the scan), and `auto`
    when it picks something else for `op` (for the scan: measured at the layers' `shape`)."""
    backends = {"mambakit[triton]": "triton"}
    if op == "selective_scan" and available_backends(DEVICE)["cuda"] is None:
        backends["mambakit[cuda]"] = "cuda"
    picked = resolve_backend("auto", DEVICE, op, shape=shape).name
    if picked not in backends.values():
        backends[f"mambakit[auto={picked}]"] = "auto"
    return backends


#: The training runs of the Triton backend once more through the separate ops, to show what the fused mixer
#: (mambakit.ops.mamba_inner) changes.
SEPARATE_OPS = "mambakit[triton, separate ops]"


def _with_separate_ops(backends: dict[str, str]) -> dict[str, str]:
    return {**backends, SEPARATE_OPS: "triton"}


#: The LM step once more with `auto`'s backends and its forward and backward as one CUDA graph (`train
#: --cuda-graphs`): the step without the host's time to issue it. mamba-ssm's model gets the same treatment.
GRAPHED_SUFFIX = " + cuda graph"
GRAPHED = f"mambakit[auto]{GRAPHED_SUFFIX}"


def _fuse(model: nn.Module, label: str) -> nn.Module:
    """`model` with its mixers fused or not, as `label` asks."""
    for module in model.modules():
        if isinstance(module, Mamba):
            module.fuse_inner = label != SEPARATE_OPS
    return model


def _mamba_ssm_lm_config(config: MambaConfig) -> Any:
    from mamba_ssm.models.config_mamba import MambaConfig as MambaSSMConfig

    return MambaSSMConfig(
        d_model=config.d_model,
        n_layer=config.n_layer,
        vocab_size=config.vocab_size,
        ssm_cfg={"d_state": config.d_state, "d_conv": config.d_conv, "expand": config.expand},
        rms_norm=config.rms_norm,
        residual_in_fp32=config.residual_in_fp32,
        fused_add_norm=True,
        pad_vocab_size_multiple=config.pad_vocab_size_multiple,
        tie_embeddings=config.tie_embeddings,
    )


def _block_outputs(module: nn.Module, x: Tensor, grad: Tensor, autocast: bool) -> dict[str, Tensor]:
    """Output, input gradient and parameter gradients (by name) of one mixer."""
    x = x.detach().clone().requires_grad_()
    names, params = zip(*module.named_parameters(), strict=True)
    with torch.autocast("cuda", dtype=BF16, enabled=autocast):
        out = module(x)
    grads = torch.autograd.grad(out, [x, *params], grad.to(out.dtype))
    return {"out": out, "dx": grads[0], **{f"d{n}": g for n, g in zip(names, grads[1:], strict=True)}}


def _block_errors(ours: dict[str, Tensor], theirs: dict[str, Tensor], tolerance: float) -> dict[str, Any]:
    errors = {key: relative_error(ours[key], theirs[key]) for key in theirs}
    worst = max((k for k in errors if k not in ("out", "dx")), key=errors.get)
    summary = {"out": errors["out"], "dx": errors["dx"], "dparams": errors[worst], "worst_param": worst[1:]}
    summary["ok"] = all(value <= tolerance for value in errors.values())
    return summary


def bench_block(batch: int = 8, length: int = 2048, d_model: int = 768) -> list[dict[str, Any]]:
    """One Mamba mixer (d_inner 2 * d_model, N 16, d_conv 4): forward and forward+backward median ms, fp32 params
    under bf16 autocast (as in training) and bf16 params, mambakit beside mamba-ssm's `Mamba` with the same
    weights; first the relative errors of output, input and parameter gradients against mamba-ssm in fp32 (no
    TF32) and under autocast."""
    shape = f"B{batch} L{length} d_model{d_model}"
    torch.manual_seed(0)
    weights = Mamba(d_model, device=DEVICE).state_dict()
    modules: dict[str, nn.Module] = {}
    layers = layer_scan_shape(batch, 2 * d_model, length, 16, BF16)
    for label, backend in _with_separate_ops(_mambakit_backends("selective_scan", layers)).items():
        modules[label] = _fuse(Mamba(d_model, scan_backend=backend, device=DEVICE), label)
    unavailable = mamba_ssm_unavailable()
    if unavailable is None:
        from mamba_ssm.modules.mamba_simple import Mamba as MambaSSM

        modules["mamba_ssm"] = MambaSSM(d_model, layer_idx=0, device=DEVICE)
        reference_label = "mamba_ssm"
    else:
        # Without mamba-ssm, the pure-PyTorch backend stands in as the reference for the correctness check.
        modules["mambakit[torch]"] = Mamba(d_model, scan_backend="torch", device=DEVICE)
        reference_label = "mambakit[torch]"
    for module in modules.values():
        module.load_state_dict(weights)

    generator = torch.Generator(device=DEVICE).manual_seed(1)
    x = torch.randn(batch, length, d_model, device=DEVICE, generator=generator)
    grad = torch.randn(batch, length, d_model, device=DEVICE, generator=generator)
    correct: dict[str, dict] = {label: {"against": reference_label} for label in modules if label != reference_label}
    for precision, autocast in (("fp32", False), ("bf16", True)):
        inputs = x if precision == "fp32" else x.to(BF16)
        with _exact_fp32() if precision == "fp32" else contextlib.nullcontext():
            expected = _block_outputs(modules[reference_label], inputs, grad, autocast)
            for label in correct:
                try:
                    found = _block_outputs(modules[label], inputs, grad, autocast)
                    correct[label][precision] = _block_errors(found, expected, TOLERANCE[precision])
                except Exception as error:
                    correct[label][precision] = f"{type(error).__name__}: {error}"[:300]
                _free()
        del expected
        _free()
    if reference_label != "mamba_ssm":
        del modules[reference_label]

    rows = []
    x_bench, grad_bench = x.to(BF16).requires_grad_(), grad.to(BF16)
    for setting in ("autocast-bf16 fp32-params", "bf16-params"):
        pure = setting == "bf16-params"
        for label in [*modules, *(["mamba_ssm"] if unavailable else [])]:
            module = None
            if label in modules:
                module = _bf16_params(modules[label]) if pure else modules[label]
            for name in ("block_fwd", "block_fwd_bwd"):
                if module is None:
                    value, note = None, unavailable
                else:
                    value, note = _measure(
                        functools.partial(
                            _block_ms, module, x_bench, grad_bench if name == "block_fwd_bwd" else None, not pure
                        )
                    )
                is_reference = label == "mamba_ssm"
                # The check covers the module whatever the timing setting: it goes on its first row only.
                first_row = name == "block_fwd" and not pure
                rows.append(
                    _row(
                        name,
                        f"{shape} {setting}",
                        label,
                        value,
                        "ms",
                        correct=correct[label] if first_row and not is_reference else None,
                        note=note,
                        reference=REFERENCE[name] if is_reference else None,
                    )
                )
                log(rows[-1])
    return rows


def _block_ms(module: nn.Module, x: Tensor, grad: Tensor | None, autocast: bool) -> float:
    """Median ms of the forward without autograd (grad None), or of forward+backward (input and parameter
    gradients)."""

    def forward() -> Tensor:
        with torch.autocast("cuda", dtype=BF16, enabled=autocast):
            return module(x)

    if grad is None:
        with torch.no_grad():
            return do_bench(forward, warmup=25, rep=100, return_mode="median")
    params = list(module.parameters())
    return do_bench(
        lambda: torch.autograd.grad(forward(), [x, *params], grad), warmup=25, rep=100, return_mode="median"
    )


def _lm_loss_mambakit(model: nn.Module, ids: Tensor) -> Tensor:
    return model(ids, labels=ids).loss


def _lm_loss_mamba_ssm(model: nn.Module, ids: Tensor, vocab_size: int) -> Tensor:
    # mamba-ssm returns logits over the padded vocabulary; the padding rows are dropped as mambakit does.
    logits = model(ids).logits[..., :vocab_size]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab_size).float(), ids[:, 1:].reshape(-1))


def _time_training(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Tensor], Tensor],
    ids: Tensor,
    steps: int,
    warmup: int,
    graphed: bool = False,
) -> dict[str, float]:
    """AdamW steps under bf16 autocast (fp32 params): the first step's loss, ms per step, peak memory. `graphed`:
    forward and backward replayed as one CUDA graph (`mambakit.train.StepGraph`, what `train --cuda-graphs` runs),
    the optimizer eager."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    graph = None
    if graphed:
        with torch.autocast("cuda", dtype=BF16):
            graph = StepGraph(lambda batch: loss_fn(model, batch["ids"]), {"ids": ids}, list(model.parameters()))

    def step() -> Tensor:
        if graph is not None:  # its gradients are the graph's buffers, rewritten by every replay
            loss = graph({"ids": ids})
        else:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=BF16):
                loss = loss_fn(model, ids)
            loss.backward()
        optimizer.step()
        return loss.detach()

    torch.cuda.reset_peak_memory_stats()
    first_loss = step().item()
    for _ in range(warmup - 1):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    return {
        "first_loss": first_loss,
        "ms": start.elapsed_time(end) / steps,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def bench_lm_train(
    batch: int = 8, length: int = 2048, steps: int = 10, warmup: int = 3, config: MambaConfig | None = None
) -> list[dict[str, Any]]:
    """Training step of a language model (default: the 130M, 24 layers of d_model 768, vocabulary 50277 padded to a
    multiple of 8, tied embeddings, RMSNorm, fp32 residual): AdamW, bf16 autocast, fp32 params; tokens/s over
    `steps` timed steps after `warmup`. The first step's losses (same weights, same batch) must agree."""
    config = config or MambaConfig()
    shape = f"B{batch} L{length} d_model{config.d_model} n_layer{config.n_layer} vocab{config.vocab_size}"
    torch.manual_seed(0)
    weights = {k: v.cpu() for k, v in MambaLMHeadModel(config, device=DEVICE).state_dict().items()}
    _free()
    ids = torch.randint(
        0, config.vocab_size, (batch, length), device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(2)
    )
    layers = layer_scan_shape(batch, config.d_inner, length, config.d_state, BF16)
    builders: dict[str, Callable[[], tuple[nn.Module, Callable]]] = {
        label: (
            lambda backend=backend, label=label: (
                _fuse(MambaLMHeadModel(config, scan_backend=backend, device=DEVICE), label),
                _lm_loss_mambakit,
            )
        )
        for label, backend in _with_separate_ops(_mambakit_backends("selective_scan", layers)).items()
    }
    builders[GRAPHED] = lambda: (MambaLMHeadModel(config, device=DEVICE), _lm_loss_mambakit)
    unavailable = mamba_ssm_unavailable()
    if unavailable is None:
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel as MambaSSMLM

        builders["mamba_ssm"] = lambda: (
            MambaSSMLM(_mamba_ssm_lm_config(config), device=DEVICE),
            lambda model, ids: _lm_loss_mamba_ssm(model, ids, config.vocab_size),
        )
        builders[f"mamba_ssm{GRAPHED_SUFFIX}"] = builders["mamba_ssm"]
    results: dict[str, dict | None] = {}
    notes: dict[str, str | None] = {"mamba_ssm": unavailable}
    for label, build in builders.items():

        def run(build: Callable = build, graphed: bool = label.endswith(GRAPHED_SUFFIX)) -> dict[str, float]:
            model, loss_fn = build()
            model.load_state_dict(weights)
            return _time_training(model, loss_fn, ids, steps, warmup, graphed)

        results[label], notes[label] = _measure(run)
        log(label, results[label], notes[label])
    reference_loss = (results.get("mamba_ssm") or {}).get("first_loss")
    rows = []
    for label in [*builders, *(["mamba_ssm"] if unavailable else [])]:
        result = results.get(label)
        correct = None
        if label != "mamba_ssm" and result is not None and reference_loss is not None:
            rel = abs(result["first_loss"] - reference_loss) / abs(reference_loss)
            correct = {
                "first_loss": result["first_loss"],
                "mamba_ssm_first_loss": reference_loss,
                "rel": rel,
                "ok": rel <= TOLERANCE["bf16"] / 10,
            }
        extra = "" if result is None else f"{result['ms']:.1f} ms/step, peak {result['peak_gib']:.1f} GiB"
        rows.append(
            _row(
                "lm_train",
                shape,
                label,
                None if result is None else batch * length / (result["ms"] / 1e3),
                "tokens/s",
                correct=correct,
                note=notes.get(label) or extra,
                reference=REFERENCE["lm_train"] if label == "mamba_ssm" else None,
            )
        )
    return rows


def _leading_agreement(ours: Tensor, theirs: Tensor) -> Tensor:
    """Per row of two (b, n) token tensors: how many leading tokens are equal."""
    differ = ours != theirs
    return torch.where(
        differ.any(-1), differ.int().argmax(-1), torch.full_like(differ[:, 0], differ.shape[1], dtype=torch.long)
    )


def _tokens_per_second(
    run: Callable[[], Tensor], new_tokens: int, prompt_length: int, found: dict[str, Tensor], key: str, warm_up: bool
) -> float:
    """New tokens x batch / seconds of one timed run() (after a first, untimed one when warm_up: it captures the
    CUDA graphs); its new tokens go to found[key]."""
    if warm_up:
        run()
    torch.cuda.synchronize()
    began = time.perf_counter()
    out = run()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    found[key] = out[:, prompt_length:]
    return new_tokens * out.shape[0] / seconds


def bench_generation(
    batches: tuple[int, ...] = (1, 64),
    new_tokens: int = 1000,
    prompt_length: int = 16,
    eager_tokens: int = 200,
    config: MambaConfig | None = None,
) -> list[dict[str, Any]]:
    """Greedy generation of `new_tokens` tokens after a random prompt, bf16 params, random weights shared by both:
    tokens/s (new tokens x batch / seconds, prompt included in the time, the second call so that the CUDA graphs
    are already captured) for mambakit's `generate` (CUDA graphs, its default on CUDA) and mamba-ssm's
    `generate(..., cg=True)`. Also mambakit without graphs over `eager_tokens` tokens, which must give exactly the
    graph's tokens. `correct` holds how many leading tokens agree with mamba-ssm's (bf16 rounding differs: they
    part after a while, which is not a failure)."""
    config = config or MambaConfig()
    torch.manual_seed(0)
    ours = {
        label: MambaLMHeadModel(config, scan_backend=backend, device=DEVICE, dtype=BF16).eval()
        for label, backend in _mambakit_backends("selective_state_update").items()
    }
    weights = next(iter(ours.values())).state_dict()
    for model in ours.values():
        model.load_state_dict(weights)
    unavailable = mamba_ssm_unavailable()
    theirs = None
    if unavailable is None:
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel as MambaSSMLM

        theirs = MambaSSMLM(_mamba_ssm_lm_config(config), device=DEVICE, dtype=BF16).eval()
        theirs.load_state_dict(weights)
    greedy = SamplingConfig(temperature=0)
    rows = []
    for batch in batches:
        shape = f"B{batch} prompt{prompt_length} +{{}} tokens, bf16, n_layer{config.n_layer}"
        prompt = torch.randint(
            0,
            config.vocab_size,
            (batch, prompt_length),
            device=DEVICE,
            generator=torch.Generator(device=DEVICE).manual_seed(batch),
        )
        reference = REFERENCE.get(f"generation_b{batch}") if new_tokens == 1000 else None
        found: dict[str, Tensor] = {}
        value, note = None, unavailable
        if theirs is not None:
            run = functools.partial(
                theirs.generate,
                prompt,
                max_length=prompt_length + new_tokens,
                cg=True,
                top_k=1,
                vocab_size=config.vocab_size,
            )
            value, note = _measure(
                functools.partial(_tokens_per_second, run, new_tokens, prompt_length, found, "mamba_ssm", True)
            )
        rows.append(
            _row("generation", shape.format(new_tokens), "mamba_ssm", value, "tokens/s", note=note, reference=reference)
        )
        log(rows[-1])
        for label, model in ours.items():
            run = functools.partial(generate, model, prompt, new_tokens, greedy)
            value, note = _measure(
                functools.partial(_tokens_per_second, run, new_tokens, prompt_length, found, f"{label} graph", True)
            )
            correct = None
            if f"{label} graph" in found and "mamba_ssm" in found:
                agree = _leading_agreement(found[f"{label} graph"], found["mamba_ssm"])
                correct = {
                    "agree_leading_min": int(agree.min()),
                    "agree_leading_mean": float(agree.float().mean()),
                    "of": new_tokens,
                }
            rows.append(
                _row(
                    "generation",
                    shape.format(new_tokens),
                    f"{label} cuda_graph",
                    value,
                    "tokens/s",
                    correct=correct,
                    note=note,
                )
            )
            log(rows[-1])
            run = functools.partial(generate, model, prompt, eager_tokens, greedy, cuda_graph=False)
            value, note = _measure(
                functools.partial(_tokens_per_second, run, eager_tokens, prompt_length, found, f"{label} eager", False)
            )
            correct = None
            if f"{label} graph" in found and f"{label} eager" in found:
                correct = {
                    "graph_equals_eager": bool(
                        torch.equal(found[f"{label} graph"][:, :eager_tokens], found[f"{label} eager"])
                    )
                }
            rows.append(
                _row(
                    "generation",
                    shape.format(eager_tokens),
                    f"{label} eager",
                    value,
                    "tokens/s",
                    correct=correct,
                    note=note,
                )
            )
            log(rows[-1])
    return rows


def _format_correct(correct: dict | None) -> str:
    if not correct:
        return ""
    parts = []
    for key, value in correct.items():
        if isinstance(value, dict):
            parts.append(f"{key}[{_format_correct(value)}]")
        elif isinstance(value, float):
            parts.append(f"{key}={value:.2e}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{key}={value:.4g}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def print_table(rows: list[dict[str, Any]]) -> None:
    """The rows as a plain-text table: value beside mamba-ssm's H100 reference, then the correctness summary."""
    log(f"{'name':14s} {'shape':58s} {'backend':34s} {'value':>10s} {'unit':8s} {'H100 ref':>9s}  correct / note")
    for row in rows:
        value = "None" if row["value"] is None else f"{row['value']:.{3 if row['unit'] == 'ms' else 0}f}"
        reference = "" if row["reference"] is None else f"{row['reference']:g}"
        tail = " | ".join(part for part in (_format_correct(row["correct"]), row["note"] or "") if part)
        log(
            f"{row['name']:14s} {row['shape']:58s} {row['backend']:34s} {value:>10s} {row['unit']:8s} "
            f"{reference:>9s}  {tail}"
        )


BENCHES: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "block": bench_block,
    "train": bench_lm_train,
    "generation": bench_generation,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(report.RESULTS))
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {', '.join(BENCHES)}")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    if not torch.cuda.is_available():
        print("bench/gpu_model.py needs a CUDA GPU and none is visible", file=sys.stderr)
        return 2
    results: dict[str, Any] = {
        **report.gpu_machine(),
        "mamba_ssm_unavailable": mamba_ssm_unavailable(),
        **mamba_ssm_versions(),
        "backends": available_backends(DEVICE),
    }
    log(json.dumps(results, default=str))
    out_dir = Path(args.out)
    rows: list[dict[str, Any]] = []
    for name in chosen:
        began = time.time()
        try:
            results[name] = BENCHES[name]()
            rows += results[name]
        except Exception:  # keep what the other benchmarks measure
            results[name] = {"error": traceback.format_exc()[-3000:]}
            log(results[name]["error"])
        log(f"[{name}] {time.time() - began:.1f}s")
        report.write(out_dir, "gpu_model_results", results, indent=1)
    log("\n=== " + results["device"] + " | " + " ".join(f"{k} {results[k]}" for k in ("mamba_ssm", "causal_conv1d")))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
