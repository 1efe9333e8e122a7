"""The open registry of model configs, backbones and architectures, in the spirit of transformers'
AutoConfig/AutoModel.register and timm's register_model.

    @register_config("toy", domain="toy")          # config.json's model_type -> this config class
    @dataclass(frozen=True)
    class ToyConfig: ...

    @register_architecture(domain="toy")            # config.json's architecture -> this model class
    class ToyClassifier(nn.Module): ...

    @register_backbone(GenomicsMambaConfig)         # the backbone Mamba heads build over this config class
    def genomics_backbone(config, **options): ...

Apps register their classes when their module is imported, which the `mambakit.apps` entry point does. A lookup
of a name nobody registered yet loads the named domain's entry point (or every domain's) and looks again, so
`load_model` finds a third party's architecture without the core knowing it.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import MambakitError

T = TypeVar("T", bound=type)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Registration:
    """One registered class and the domain app that owns it (None for the core)."""

    cls: type
    domain: str | None


_CONFIGS: dict[str, Registration] = {}
_ARCHITECTURES: dict[str, Registration] = {}
_BACKBONES: dict[type, Callable[..., Any]] = {}


class UnknownNameError(MambakitError, KeyError):
    """A model_type or architecture that no installed domain registers."""

    def __str__(self) -> str:
        return str(self.args[0])


def _register(table: dict[str, Registration], kind: str, name: str, cls: type, domain: str | None) -> None:
    previous = table.get(name)
    if previous is not None and previous.cls is not cls:
        warnings.warn(
            f"{kind} {name!r} registered again by {cls.__module__}.{cls.__qualname__}; it replaces "
            f"{previous.cls.__module__}.{previous.cls.__qualname__}",
            stacklevel=3,
        )
    table[name] = Registration(cls, domain)


def register_config(model_type: str, *, domain: str | None = None) -> Callable[[T], T]:
    """Class decorator: checkpoints whose config.json says `model_type` are read by this config class.

    The class gets `model_type` as a class attribute. It needs `to_dict()` and a `from_dict(data)` classmethod
    (see `mambakit.models.protocol.ModelConfig`).
    """

    def decorate(cls: T) -> T:
        cls.model_type = model_type  # type: ignore[attr-defined]
        _register(_CONFIGS, "model_type", model_type, cls, domain)
        return cls

    return decorate


def register_architecture(name: str | None = None, *, domain: str | None = None) -> Callable[[T], T]:
    """Class decorator: checkpoints whose config.json names this architecture (default: the class name) are
    rebuilt with this class's `from_config`. The class gets `architecture` as a class attribute."""

    def decorate(cls: T) -> T:
        architecture = name or cls.__name__
        cls.architecture = architecture  # type: ignore[attr-defined]
        _register(_ARCHITECTURES, "architecture", architecture, cls, domain)
        return cls

    return decorate


def register_backbone(config_class: type) -> Callable[[F], F]:
    """Function decorator: `factory(config, scan_backend=..., device=..., dtype=...)` builds the backbone of
    mambakit's Mamba heads for configs of `config_class` (and its subclasses without their own)."""

    def decorate(factory: F) -> F:
        _BACKBONES[config_class] = factory
        return factory

    return decorate


def _lookup(table: dict[str, Registration], kind: str, name: str, domain: str | None) -> Registration:
    if name not in table:
        # Importing an app registers its classes: the checkpoint's domain first, every installed one otherwise.
        from ..domains import load_domains

        loaded = load_domains(only=domain)
        if name not in table and domain in loaded:
            loaded[domain].check_requirements()  # an app without its extra registers nothing: name the extra
        if name not in table and domain is not None:
            load_domains()
    if name not in table:
        raise UnknownNameError(
            f"unknown {kind} {name!r}; registered: {', '.join(sorted(table)) or 'none'} "
            f"(install the app that provides it)"
        )
    return table[name]


def config_class(model_type: str, domain: str | None = None) -> Registration:
    """The config class registered for `model_type`, loading domain apps as needed."""
    return _lookup(_CONFIGS, "model_type", model_type, domain)


def architecture_class(name: str, domain: str | None = None) -> Registration:
    """The model class registered as architecture `name`, loading domain apps as needed."""
    return _lookup(_ARCHITECTURES, "architecture", name, domain)


def config_classes() -> dict[str, Registration]:
    """Every registered config class by model_type (of the apps imported so far)."""
    return dict(_CONFIGS)


def list_architectures(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a shell-style `pattern`, sorted (every installed app loaded)."""
    from ..domains import load_domains

    load_domains()
    return sorted(fnmatch.filter(_ARCHITECTURES, pattern))


def backbone_factory(config: Any) -> Callable[..., Any]:
    """The backbone factory registered for the nearest class of `config`'s type."""
    for cls in type(config).__mro__:
        if cls in _BACKBONES:
            return _BACKBONES[cls]
    raise UnknownNameError(f"no backbone registered for {type(config).__name__}")


def owner_domain(model: Any) -> str | None:
    """The domain that registered `model`'s architecture or its config's type, if any."""
    for table, name in (
        (_ARCHITECTURES, getattr(model, "architecture", None)),
        (_CONFIGS, getattr(model.config, "model_type", None)),
    ):
        registration = table.get(name) if isinstance(name, str) else None
        if registration is not None and registration.domain is not None:
            return registration.domain
    return None
