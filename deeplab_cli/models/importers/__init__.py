"""Import DeepLab checkpoints of other projects (and our own) into our architecture, strictly.

One entry point, :func:`import_checkpoint`, for: our checkpoints (rebuilt from their stored config by
the config layer, which passes ``rebuild_ours``: ``factory.import_any_checkpoint``), torchvision's
``deeplabv3_resnet50/101`` and ``deeplabv3_mobilenet_v3_large``, kazuto1011's
``DeepLabV2_ResNet101_MSC`` and VainF's ``deeplabv3[plus]_{resnet50,resnet101,mobilenet}``.
Each import builds our model so that it computes what the original computes (not only
that the keys fit), loads every tensor or fails naming the keys that differ, and returns
the preprocessing the weights expect and the config that rebuilds the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...errors import ConfigError
from .base import (
    CAFFE_BGR,
    IMAGENET_RGB,
    CheckpointLayoutError,
    Imported,
    Layout,
    Preprocess,
)
from .detect import (
    LAYOUTS,
    OURS,
    detect_layout,
    is_ours,
    state_dict_of,
    unknown_layout_error,
)
from .kazuto import ScaleFactorMSC

__all__ = [
    "CAFFE_BGR",
    "IMAGENET_RGB",
    "LAYOUTS",
    "OURS",
    "CheckpointLayoutError",
    "Imported",
    "Layout",
    "Preprocess",
    "ScaleFactorMSC",
    "detect_layout",
    "import_checkpoint",
    "is_ours",
    "state_dict_of",
    "unknown_layout_error",
]


def _class_count(layout: Layout, state: dict[str, Any], num_classes: int | None) -> int:
    """Classes from the classifier's shape; a missing classifier is reported by the strict load."""
    weight = state.get(layout.classifier_key)
    if weight is None:
        return num_classes or 21
    found = int(weight.shape[0])
    if num_classes is not None and num_classes != found:
        raise CheckpointLayoutError(
            f"checkpoint has {found} classes ({layout.classifier_key} is {list(weight.shape)}) but "
            f"num_classes={num_classes} was asked; import it as is and replace the classifier to change the count"
        )
    return found


#: ``(checkpoint, output_stride, num_classes) -> Imported`` for our own format: it reads the stored config,
#: which only the config layer may do (``factory.rebuild_our_checkpoint``).
RebuildOurs = Callable[[dict[str, Any], "int | None", "int | None"], Imported]


def import_checkpoint(
    obj: Any,
    *,
    output_stride: int | None = None,
    num_classes: int | None = None,
    rebuild_ours: RebuildOurs | None = None,
) -> Imported:
    """Detect the layout of ``obj`` (a loaded checkpoint; ``factory.import_any_checkpoint`` also takes a path)
    and import it into our model.

    ``output_stride`` defaults to the one the weights were trained with (VainF files do
    not record it: 16 is assumed). ``num_classes`` is read from the classifier; passing a
    different one is an error. The model comes back in eval mode. Our own checkpoints
    need ``rebuild_ours`` (``factory.import_any_checkpoint`` passes it).
    """
    name = detect_layout(obj)
    if name == OURS:
        if rebuild_ours is None:
            raise CheckpointLayoutError(
                f"{OURS} checkpoints are rebuilt from their stored config: use factory.import_any_checkpoint"
            )
        return rebuild_ours(obj, output_stride, num_classes)
    layout, state = LAYOUTS[name], state_dict_of(obj)
    stride = output_stride or layout.output_strides[0]
    if stride not in layout.output_strides:
        raise ConfigError(
            f"output_stride={stride} is not available for {name}; choose one of {list(layout.output_strides)}"
        )
    n = _class_count(layout, state, num_classes)
    model, notes = layout.load(state, n, stride)
    if output_stride is None and not layout.stride_in_file:
        notes.append(f"the file does not record its output stride; assumed {stride} (pass output_stride= if not)")
    config = layout.config(n, stride)
    config["model"] = {**config["model"], "preprocess": layout.preprocess.as_config()}  # it belongs to the weights
    return Imported(model, name, layout.preprocess, config, notes)
