"""The `mambakit` command line: `info`, `convert`, `bench scan`, and `train|eval|generate|predict <domain>`
for every domain app registered under the entry-point group `mambakit.apps`.

Errors a user can cause print as one line on stderr with exit code 2, never a traceback (MAMBAKIT_DEBUG=1 shows
it). Any other exception is a bug in mambakit: one line that says so, exit code 1.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

try:  # typer >= 0.2x vendors its own click: its exceptions are the ones raised
    from typer._click import Context
    from typer._click import exceptions as click_exceptions
except ImportError:  # older typer uses the click package
    from click import Context
    from click import exceptions as click_exceptions
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cli_support import DeviceOption, eval_command, resolve_device, train_command
from .domains import VERBS, Domain, load_domains
from .errors import MambakitError, UserError, described, first_line

VERB_HELP = {
    "train": "Train a model (domains below; each runs on its embedded default data when --data is not given).",
    "eval": "Evaluate a checkpoint on data.",
    "generate": "Generate from a checkpoint (text, audio).",
    "predict": "Predict labels or export embeddings with a checkpoint.",
}


class DomainGroup(typer.core.TyperGroup):
    """A verb's group of domain commands; an unknown domain is a one-line error listing the known ones."""

    def resolve_command(self, ctx: Context, args: list[str]):  # click declares no return type here
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            known = ", ".join(self.list_commands(ctx)) or "none installed"
            raise click_exceptions.UsageError(f"unknown domain {name!r} for `{ctx.info_name}`; known domains: {known}")
        return super().resolve_command(ctx, args)


app = typer.Typer(
    help="Selective state space models (Mamba) for genomics, audio, vision and text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: the kernels on this machine, and those domains add.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _domain_command(domain: Domain, verb: str) -> Callable[..., None]:
    if verb in domain.commands:
        return _checked(domain, domain.commands[verb])
    return _checked(domain, train_command(domain) if verb == "train" else eval_command(domain))


def _checked(domain: Domain, command: Callable[..., None]) -> Callable[..., None]:
    """`command`, run only once the packages the domain declares as required import (its --help works without)."""

    @functools.wraps(command)
    def run_checked(**values: object) -> None:
        domain.check_requirements()
        command(**values)

    return run_checked


#: The domain commands the last `main` added: the next call replaces them. Adding them again on every call made
#: each call in one process (a Python caller, the test suite) slower than the one before.
_domain_registrations: list[tuple[list[Any], Any]] = []


def _add_domain_commands(domains: dict[str, Domain]) -> None:
    for registered, entry in _domain_registrations:
        registered.remove(entry)
    _domain_registrations.clear()
    for domain in domains.values():
        for name, command in domain.benchmarks.items():
            bench_app.command(name, help=command.__doc__ or domain.help)(_checked(domain, command))
            _domain_registrations.append((bench_app.registered_commands, bench_app.registered_commands[-1]))
    for verb in VERBS:
        group = typer.Typer(cls=DomainGroup, help=VERB_HELP[verb], no_args_is_help=True)
        for domain in domains.values():
            if verb in domain.verbs:
                command = _domain_command(domain, verb)
                group.command(domain.name, help=command.__doc__ or domain.help)(command)
        app.add_typer(group, name=verb)
        _domain_registrations.append((app.registered_groups, app.registered_groups[-1]))


@app.command()
def info() -> None:
    """Versions, devices, installed domains, and which selective-scan backends can run here (and why not)."""
    import torch

    from . import __version__
    from .ops import available_backends

    console = Console()
    console.print(f"mambakit {__version__}, torch {torch.__version__}, python {platform.python_version()}")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    console.print(f"CUDA device: {cuda}; CPU threads: {torch.get_num_threads()}")
    _print_domains(console)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    title = "selective-scan backends (auto: the GPU one measured fastest at each shape, else the first usable)"
    table = Table("scan backend", *devices, title=title)
    reasons = {device: available_backends(device) for device in devices}
    for name in reasons["cpu"]:
        table.add_row(name, *(escape(reasons[device][name] or "usable") for device in devices))
    console.print(table)
    _print_nvrtc(console)


def _print_domains(console: Console) -> None:
    """Each installed domain: usable or not, and what it (or one of its features) lacks and how to install it."""
    domains = load_domains()
    if not domains:
        console.print("domains: none installed")
        return
    table = Table("domain", "status", "missing packages (and the extras that install them)", title="domains")
    for name, domain in domains.items():
        unmet = domain.unmet_requirements()
        usable = all(requirement.needed_for for requirement, _ in unmet)
        missing = "; ".join(
            requirement.explain(requirement.needed_for or "every command", error) for requirement, error in unmet
        )
        table.add_row(name, "usable" if usable else "not usable", escape(missing or "none"))
    console.print(table)


def _print_nvrtc(console: Console) -> None:
    """NVRTC's version and the `cuda` backend's compile times (cuda_scan.LAYER_VARIANTS): first use and the disk
    cache's hit path."""
    import torch

    from .ops import cuda_scan, nvrtc

    try:
        version = nvrtc.nvrtc_version()
    except Exception as error:  # a missing library surfaces as several exception types
        console.print(f"NVRTC: not loadable ({type(error).__name__}); the cuda backend cannot compile here")
        return
    major, minor = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else (9, 0)
    architecture = 10 * major + minor
    table = Table(
        "input dtype",
        "first compile (s)",
        "cache hit (ms)",
        title=f"cuda backend: NVRTC {version[0]}.{version[1]}, training kernels (backward v1 and v2) for "
        f"sm_{architecture}, cached in {nvrtc.cache_dir()}",
    )
    try:
        rows = cuda_scan.compile_report(architecture)
    except nvrtc.NvrtcError as error:
        console.print(f"NVRTC {version[0]}.{version[1]}: {escape(str(error).splitlines()[0])}")
        return
    for dtype, first, hit in rows:
        table.add_row(dtype, "already cached" if first is None else f"{first:.2f}", f"{hit * 1000:.1f}")
    console.print(table)


#: Weight dtypes `convert --dtype` stores.
STORAGE_DTYPES = ("float32", "float16", "bfloat16")


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="mambakit, state-spaces or Hugging Face Mamba checkpoint folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the mambakit checkpoint.")],
    dtype: Annotated[
        str, typer.Option("--dtype", help="Store the weights as float32 | float16 | bfloat16 (loading casts back).")
    ] = "float32",
) -> None:
    """Convert a state-spaces/mamba or Hugging Face MambaForCausalLM checkpoint into a mambakit checkpoint, or
    re-save a mambakit one, e.g. in float16 for a file half the size. The source's other files (run record,
    tokenizer) are copied; its weight files and optimizer state are not."""
    import torch

    from .models import load_model, save_pretrained
    from .models.checkpoint import CONFIG_NAME, SAFETENSORS_NAME

    if dtype not in STORAGE_DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose one of {', '.join(STORAGE_DTYPES)}")
    # resolve() equates every spelling (a trailing slash, relative or absolute, a symlink); samefile also a bind mount.
    if out.resolve() == source.resolve() or (out.exists() and source.exists() and out.samefile(source)):
        raise UserError(f"--out {out} is the source folder; write the converted checkpoint to another folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; a checkpoint is a folder: give a new or an existing folder's path")
    model = load_model(source)
    kept = {CONFIG_NAME, SAFETENSORS_NAME, "trainer_state.pt"}
    extra_files = {
        file.name: file.read_bytes()
        for file in sorted(source.iterdir())
        if file.is_file()
        and file.name not in kept
        and not file.name.endswith((".bin", ".safetensors", ".pt", ".index.json"))
    }
    save_pretrained(model.to(getattr(torch, dtype)), out, extra_files=extra_files)
    parameters = sum(p.numel() for p in model.parameters())
    Console().print(f"wrote {out} ({model.architecture}, {parameters / 1e6:.1f}M parameters, {dtype})")


@bench_app.command("scan")
def bench_scan(
    batch: Annotated[int, typer.Option(min=1)] = 4,
    dim: Annotated[int, typer.Option(min=1)] = 256,
    d_state: Annotated[int, typer.Option("--d-state", min=1)] = 16,
    length: Annotated[int, typer.Option(min=1)] = 1024,
    device: DeviceOption = "auto",
    backward: Annotated[bool, typer.Option(help="Time forward+backward, not only forward.")] = True,
    repeats: Annotated[int, typer.Option(min=1)] = 5,
) -> None:
    """Time selective_scan on every backend usable here, at one shape (random fp32 inputs, median of repeats)."""
    from .ops import available_backends
    from .ops.timing import time_scan

    resolved = resolve_device(device or "auto")
    table = Table(
        "backend",
        "median ms",
        title=f"selective_scan {'fwd+bwd' if backward else 'fwd'} B{batch} "
        f"D{dim} N{d_state} L{length} fp32 on {resolved}",
    )
    for name, reason in available_backends(resolved).items():
        if reason is None and not (name == "reference" and length * batch > 1 << 14):
            table.add_row(name, f"{time_scan(name, batch, dim, d_state, length, resolved, backward, repeats):.2f}")
    Console().print(table)


@bench_app.callback()
def _bench() -> None:
    """Benchmarks: the kernels on this machine, and those domains add (capabilities: the synthetic suite)."""


@app.callback()
def _root() -> None:
    """Selective state space models (Mamba) for genomics, audio, vision and text."""


def _domains_for(argv: list[str]) -> dict[str, Domain]:
    """The domains a command line needs: for `VERB DOMAIN ...` only that domain's app, else every app (help,
    listings, bench). Importing every app costs seconds (timm, torchvision, the trainer) that a command of one
    domain, or its one-line error, should not pay."""
    if len(argv) >= 2 and argv[0] in VERBS:
        named = load_domains(only=argv[1])
        if argv[1] in named:
            return named
    return load_domains()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: run the CLI and turn user errors into one line and an exit code."""
    _add_domain_commands(_domains_for(sys.argv[1:] if argv is None else argv))
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="mambakit", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError:
        return 0  # the help was shown
    except typer.Exit as done:
        return done.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("mambakit: aborted", file=sys.stderr)
        return 130
    except click_exceptions.ClickException as error:
        print(f"mambakit: error: {error.format_message()}", file=sys.stderr)
        return error.exit_code
    except MambakitError as error:
        if os.environ.get("MAMBAKIT_DEBUG"):
            raise
        print(f"mambakit: error: {first_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine refused: a missing or unreadable path, a full disk, no permission
        if os.environ.get("MAMBAKIT_DEBUG"):
            raise
        where = f": {error.filename}" if error.filename else ""
        print(f"mambakit: error: {error.strerror or described(error)}{where}", file=sys.stderr)
        return 2
    except Exception as error:
        if os.environ.get("MAMBAKIT_DEBUG"):
            traceback.print_exc()
        hint = "" if os.environ.get("MAMBAKIT_DEBUG") else "; MAMBAKIT_DEBUG=1 shows its traceback"
        print(
            f"mambakit: internal error (a bug in mambakit, please report it): {described(error)}{hint}", file=sys.stderr
        )
        return 1
    return result if isinstance(result, int) else 0


def run() -> None:
    """The `mambakit` console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()
