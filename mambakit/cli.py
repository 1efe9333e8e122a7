"""The `mambakit` command line."""

from __future__ import annotations

import platform

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="Selective state space models (Mamba) for genomics, audio, vision and text.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def main() -> None:
    """Selective state space models (Mamba) for genomics, audio, vision and text."""


@app.command()
def info() -> None:
    """Versions, devices, and which selective-scan backends can run here (and why the others cannot)."""
    import torch

    import mambakit
    from mambakit.ops import available_backends

    console = Console()
    console.print(f"mambakit {mambakit.__version__}, torch {torch.__version__}, python {platform.python_version()}")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    console.print(f"CUDA device: {cuda}; CPU threads: {torch.get_num_threads()}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    table = Table("scan backend", *devices, title="selective-scan backends (auto picks the first usable)")
    reasons = {device: available_backends(device) for device in devices}
    for name in reasons["cpu"]:
        table.add_row(name, *(escape(reasons[device][name] or "usable") for device in devices))
    console.print(table)


if __name__ == "__main__":
    app()
