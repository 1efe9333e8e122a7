"""The domain registry: apps (genomics, audio, vision, text, or a third party's) register through the entry-point
group `mambakit.apps`, each pointing at a `Domain` object. The core never imports an app by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "mambakit.apps"
VERBS = ("train", "eval", "generate", "predict")


@dataclass(frozen=True)
class Domain:
    """One domain's CLI commands. Each command is a typed function; the CLI builds its options from the
    signature (use the shared option types of mambakit.cli_options so options mean the same everywhere)."""

    name: str
    help: str
    commands: dict[str, Callable[..., None]] = field(default_factory=dict)
    """verb (one of VERBS) -> command function"""

    def __post_init__(self) -> None:
        unknown = set(self.commands) - set(VERBS)
        if unknown:
            raise ValueError(f"domain {self.name!r}: unknown verbs {sorted(unknown)}; verbs are {', '.join(VERBS)}")


def load_domains() -> dict[str, Domain]:
    """Every installed domain, by name, sorted. An app that fails to load is skipped with a warning rather than
    breaking the whole CLI."""
    import warnings

    domains: dict[str, Domain] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            domain = entry.load()
        except Exception as error:  # noqa: BLE001 - a broken third-party app must not take the CLI down
            warnings.warn(f"mambakit app {entry.name!r} failed to load: {type(error).__name__}: {error}",
                          stacklevel=2)
            continue
        if not isinstance(domain, Domain):
            warnings.warn(f"mambakit app {entry.name!r} does not point at a mambakit.domains.Domain", stacklevel=2)
            continue
        domains[domain.name] = domain
    return dict(sorted(domains.items()))
