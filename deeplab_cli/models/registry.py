"""Name -> backbone or head. Each registers itself in the module that defines it, so the builder has no if-chain.

A new head is its module (a class, its schema, and a registration) plus a YAML in
``configs/head/`` whose defaults list names ``<name>_schema``; nothing else changes.
Every module under :mod:`deeplab_cli.models.backbones` and :mod:`deeplab_cli.models.heads`
is imported on the first lookup, so dropping a file there is enough; code outside the
package (a test, a user's project) registers by being imported before the lookup.

An entry carries what the rest of the program asks about its option, instead of the
asker testing names:

- a backbone: how to build it at an output stride, the input normalisation its ImageNet
  weights expect, how to load those weights, and a check that needs no weights (timm's
  output strides);
- a head: how to build it from the backbone's declared features and which features it
  needs (the v3+ decoder needs ``low_level``, a stride-4 map).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import ConfigError
from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from .backbones.base import Backbone, FeatureInfo

if TYPE_CHECKING:
    from .weights.provenance import Provenance

Preprocess = tuple[list[float], list[float]]


class ModelConfigError(ConfigError):
    """An impossible combination of model options (an unknown name, a head the backbone cannot feed)."""


def imagenet_preprocess(args: dict[str, Any]) -> Preprocess:
    """torchvision's ImageNet statistics: what most ImageNet weights were trained with."""
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


@dataclass(frozen=True)
class HeadInputs:
    """What a head is built from: the backbone's declared features, the classes and the output stride."""

    features: dict[str, FeatureInfo]
    num_classes: int
    output_stride: int

    def channels(self, name: str = "out") -> int:
        return self.features[name].channels


@dataclass(frozen=True)
class HeadEntry:
    name: str
    build: Callable[..., nn.Module]  # (inputs: HeadInputs, **head_args) -> module
    schema: type | None = None  # the dataclass Hydra checks ``head=<name>`` against
    needs: tuple[str, ...] = ("out",)  # the backbone features it reads


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    build: Callable[..., Backbone]  # (output_stride, **backbone_args) -> backbone without weights
    schema: type | None = None
    preprocess: Callable[[dict[str, Any]], Preprocess] = imagenet_preprocess
    #: (model, weights_file) -> where the weights came from; None: no ImageNet weights (trained from scratch)
    load_imagenet: Callable[[Any, str | None], Provenance] | None = None
    #: (output_stride, weights_file, **backbone_args) -> (backbone with weights, provenance), for encoders that
    #: are built and loaded in one go (timm); used instead of ``build`` + ``load_imagenet``
    build_pretrained: Callable[..., tuple[Backbone, Provenance]] | None = None
    #: (backbone_args, output_stride, needs) -> None; raises ConfigError before anything is built
    check: Callable[[dict[str, Any], int, tuple[str, ...]], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


BACKBONES: dict[str, BackboneEntry] = {}
HEADS: dict[str, HeadEntry] = {}
_PACKAGES = ("deeplab_cli.models.backbones", "deeplab_cli.models.heads")
#: entry-point group of other packages' backbones and heads: ``[project.entry-points."deeplab_cli.plugins"]``
PLUGIN_GROUP = "deeplab_cli.plugins"
_loaded = False


def _register(table: dict[str, Any], entry: Any, kind: str) -> None:
    known = table.get(entry.name)
    if known is not None and known.build.__module__ != entry.build.__module__:
        raise ValueError(
            f"{kind} {entry.name!r} is registered twice ({known.build.__module__}, {entry.build.__module__})"
        )
    table[entry.name] = entry


def register_head(name: str, *, schema: type | None = None, needs: Iterable[str] = ("out",)) -> Callable:
    """Decorator for a builder ``(inputs: HeadInputs, **args) -> nn.Module``: ``head=<name>`` builds with it."""

    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _register(HEADS, HeadEntry(name, build, schema, tuple(needs)), "head")
        return build

    return decorate


def register_backbone(name: str, *, schema: type | None = None, **options: Any) -> Callable:
    """Decorator for a builder ``(output_stride, **args) -> Backbone``; ``options`` are :class:`BackboneEntry`'s."""

    def decorate(build: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _register(BACKBONES, BackboneEntry(name, build, schema, **options), "backbone")
        return build

    return decorate


def load_builtin() -> None:
    """Import every module of the backbone and head packages, and every plugin, once, so that each has registered.

    A plugin is a module of another installed package named under the ``deeplab_cli.plugins``
    entry-point group; importing it registers its options, in every process that looks one up.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package in _PACKAGES:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{package}.{info.name}")
    for plugin in entry_points(group=PLUGIN_GROUP):
        try:
            plugin.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin is named, whatever it raised
            raise ModelConfigError(
                f"the deeplab_cli.plugins entry point {plugin.name!r} ({plugin.value}) failed to import: "
                f"{type(exc).__name__}: {exc}. Fix or uninstall the package that declares it."
            ) from exc


def _lookup(table: dict[str, Any], name: str, kind: str) -> Any:
    load_builtin()
    if name not in table:
        raise ModelConfigError(f"{kind}={name!r} is unknown; choose one of {', '.join(sorted(table))}.")
    return table[name]


def backbone(name: str) -> BackboneEntry:
    return _lookup(BACKBONES, name, "backbone")


def head(name: str) -> HeadEntry:
    return _lookup(HEADS, name, "head")


def backbones() -> dict[str, BackboneEntry]:
    load_builtin()
    return dict(BACKBONES)


def heads() -> dict[str, HeadEntry]:
    load_builtin()
    return dict(HEADS)
