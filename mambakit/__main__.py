"""`python -m mambakit`: the same CLI as the `mambakit` command."""

from .cli import run

run()
