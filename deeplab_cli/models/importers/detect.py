"""Tell which project wrote a checkpoint from its key names, and say how close an unknown one comes."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from functools import cache
from typing import Any

from torch import Tensor

from . import kazuto, torchvision_seg, vainf
from .base import CheckpointLayoutError, Layout, mismatch_error

#: Our own checkpoints (``deeplab-train`` writes ``{"format": "deeplab-cli", "model": ..., "config": ...}``).
OURS = "deeplab-cli"
LAYOUTS: dict[str, Layout] = {
    layout.name: layout for layout in (*torchvision_seg.LAYOUTS, kazuto.LAYOUT, *vainf.LAYOUTS)
}
#: Dict entries other projects keep their weights under.
_WRAPPERS = ("model_state", "state_dict")
_RESNET_DEPTHS = {6: "resnet50", 23: "resnet101"}  # blocks in layer3


def is_ours(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == OURS


def state_dict_of(obj: Any) -> dict[str, Tensor]:
    """The weights of a loaded checkpoint: ours' ``model``, VainF's ``model_state``, or a bare state dict.

    A ``module.`` prefix on every key (a ``DataParallel`` saved whole) is removed.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointLayoutError(f"a checkpoint must be a dict of tensors, not a {type(obj).__name__}")
    if is_ours(obj):
        obj = obj.get("model", {})
    for wrapper in _WRAPPERS:
        if isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    others = [str(key) for key, value in obj.items() if not isinstance(value, Tensor)]
    if others or not obj:
        shown = ", ".join(others[:5]) or "none"
        raise CheckpointLayoutError(
            f"checkpoint is not a state dict: {len(others)} of its {len(obj)} entries are not tensors ({shown})"
        )
    if all(key.startswith("module.") for key in obj):
        return {key[len("module.") :]: value for key, value in obj.items()}
    return dict(obj)


def _resnet_depth(keys: Collection[str]) -> str | None:
    blocks = {key.split(".")[2] for key in keys if key.startswith("backbone.layer3.")}
    return _RESNET_DEPTHS.get(len(blocks))


def _guess(keys: Collection[str]) -> str | None:
    """The layout named by a few telltale key prefixes; the strict load then checks every key."""

    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in keys)

    if has("base.layer"):
        return kazuto.LAYOUT.name
    if has("classifier.0.convs."):
        body = "mobilenet_v3_large" if has("backbone.0.") else _resnet_depth(keys)
        return f"torchvision_deeplabv3_{body}" if body else None
    if has("classifier.classifier.") or has("classifier.project."):
        if any(".body." in key for key in keys if key.startswith("classifier.")):
            raise CheckpointLayoutError(
                "VainF checkpoint trained with --separable_conv: its depthwise + pointwise head convs have "
                "no BN in between, unlike our separable head, so it cannot be imported"
            )
        plus = has("classifier.project.") or has("classifier.aspp.")
        body = "mobilenet" if has("backbone.low_level_features.") else _resnet_depth(keys)
        return f"vainf_deeplabv3{'plus' if plus else ''}_{body}" if body else None
    return None


@cache
def _expected(name: str) -> frozenset[str]:
    return frozenset(LAYOUTS[name].expected_keys())


def unknown_layout_error(keys: Collection[str]) -> CheckpointLayoutError:
    """Compare ``keys`` with every known layout and list the differences to the closest one."""
    given = set(keys)

    def overlap(name: str) -> float:
        return len(given & _expected(name)) / len(given | _expected(name))

    name = max(LAYOUTS, key=overlap)
    layout, expected = LAYOUTS[name], _expected(name)
    missing = [k for k in layout.expected_keys() if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in keys if k not in expected and not k.startswith(layout.ignored)]
    header = (
        f"checkpoint matches no known layout (known: {OURS}, {', '.join(LAYOUTS)}); "
        f"the closest is {name} ({len(given & expected)} of its {len(expected)} keys present), against which:"
    )
    return mismatch_error(header, missing, unexpected)


def detect_layout(obj: Any) -> str:
    """The layout name of a loaded checkpoint (``deeplab-cli`` or a key of :data:`LAYOUTS`).

    Raises :class:`CheckpointLayoutError` listing the differences to the closest layout
    when none fits. The output stride cannot be read from the keys (see the importers).
    """
    if is_ours(obj):
        return OURS
    keys = list(state_dict_of(obj))
    name = _guess(keys)
    if name is None:
        raise unknown_layout_error(keys)
    return name
