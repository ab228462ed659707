"""Aligned Xception-65, the DeepLab v3+ backbone, with output stride 8/16/32.

Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
Segmentation", ECCV 2018 (https://arxiv.org/abs/1802.02611), section 3.2 and Fig. 4.
Layer for layer this follows the authors' TF code, ``xception_65`` in
``tensorflow/models/research/deeplab/core/xception.py``, because that code (not the
paper's prose) produced the published numbers and the ImageNet checkpoint that timm's
``xception65.tf_in1k`` is a port of:

* Stem: 3x3/2 conv 32 + BN + ReLU, 3x3 conv 64 + BN + ReLU.
* 21 units of three separable convs (depthwise 3x3 + BN, pointwise 1x1 + BN). Entry
  flow: 128, 256, 728 channels, each stride 2 with a 1x1 conv + BN shortcut; middle
  flow: 16 units of 728 with an identity shortcut; exit flow: (728, 1024, 1024) stride
  2 with a conv shortcut, then (1536, 1536, 2048) without shortcut. Max pooling is
  replaced by giving the third separable conv of a unit the stride.
* ReLU placement (TF's ``activation_fn_in_separable_conv``): the 20 units with a
  shortcut are pre-activation, ``ReLU -> sepconv`` three times, so there is a ReLU
  between every separable conv but none between a depthwise conv and its pointwise
  conv, and none after the residual sum (the next unit's first ReLU applies it; the
  shortcut sees the un-activated input). Only the last unit (no shortcut) has BN +
  ReLU after each depthwise *and* each pointwise conv, the MobileNet-style form the
  paper's section 3.2 describes for every depthwise conv. Following the prose instead
  would change what the ImageNet weights compute.
* Padding is ``dilation`` on every 3x3 conv, stride 1 or 2. This is TF's explicit
  ``fixed_padding`` (symmetric, independent of the input size), not TF's native
  'SAME' which pads asymmetrically on even inputs; a stride-2 conv gives ceil(n / 2),
  and an odd crop such as 513 keeps its corner pixels aligned across strides.
* BatchNorm eps is 1e-3 as in TF's ``xception_arg_scope`` (the checkpoint's running
  variances were estimated with it); momentum stays at PyTorch's 0.1 (TF's decay
  0.9997 is tuned for its own long schedules). Convs have no bias, as BN follows.

``low_level`` is TF's decoder end point ``entry_flow/block2/unit_1/xception_module/
separable_conv2_pointwise``: the BN output of entry block 2's second separable conv
(256 ch, stride 4, before the ReLU and the stride-2 third conv). timm's
``features_only`` taps the same tensor after the ReLU. ``out`` is the exit flow output
(2048 ch, ReLU'd).

The backbone has 37,867,312 parameters, the same as timm's ``xception65`` (39,916,312)
minus its ImageNet classifier ``head.fc`` (2048 x 1000 + 1000), independent of the
output stride. The ImageNet weights expect inputs scaled to [-1, 1]
(:data:`INPUT_MEAN`, :data:`INPUT_STD`), not the usual ImageNet mean/std.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from ..registry import register_backbone
from .base import Backbone, FeatureInfo
from .resnet import check_output_stride

if TYPE_CHECKING:
    from ..weights.provenance import Provenance

OUTPUT_STRIDES = (8, 16, 32)
#: Parameters of :class:`Xception65` (any output stride); checked by the tests.
NUM_PARAMETERS = 37_867_312
#: Input normalisation the TF / timm ImageNet weights were trained with: (x / 255 - 0.5) / 0.5.
INPUT_MEAN = (0.5, 0.5, 0.5)
INPUT_STD = (0.5, 0.5, 0.5)
#: Where to get the ImageNet weights (either file works with :func:`load_xception65_weights`).
TIMM_WEIGHTS_URL = "https://huggingface.co/timm/xception65.tf_in1k/resolve/main/pytorch_model.bin"

_BN_EPS = 1e-3
_STEM_STRIDE = 2

Skip = Literal["conv", "sum", "none"]

# One row per Xception unit, in order: (flow, unit name, output depths of the three separable
# convs, nominal stride, shortcut, ReLU inside the separable convs instead of before them).
_UNITS: tuple[tuple[str, str, tuple[int, int, int], int, Skip, bool], ...] = (
    ("entry_flow", "block1", (128, 128, 128), 2, "conv", False),
    ("entry_flow", "block2", (256, 256, 256), 2, "conv", False),
    ("entry_flow", "block3", (728, 728, 728), 2, "conv", False),
    *(("middle_flow", f"unit{i}", (728, 728, 728), 1, "sum", False) for i in range(1, 17)),
    ("exit_flow", "block1", (728, 1024, 1024), 2, "conv", False),
    ("exit_flow", "block2", (1536, 1536, 2048), 1, "none", True),
)

#: Module prefix of every unit in our state dict, in the order of timm's ``blocks.0`` .. ``blocks.20``.
UNIT_PREFIXES = tuple(f"{flow}.{name}" for flow, name, *_ in _UNITS)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


def unit_strides_and_dilations(strides: Sequence[int], output_stride: int) -> list[tuple[int, int]]:
    """The one place output stride becomes per-unit ``(stride, dilation)``.

    As TF's ``stack_blocks_dense``: once the running stride equals ``output_stride``, a
    stride-2 unit runs with stride 1 and the dilation of every *later* unit is
    multiplied by that stride. The converted unit keeps the old dilation: its third conv is the
    former strided conv made dense, so it sees the same input pixels as before.
    """
    check_output_stride(output_stride)
    current, dilation, plan = _STEM_STRIDE, 1, []
    for stride in strides:
        if current >= output_stride:
            plan.append((1, dilation))
            dilation *= stride
        else:
            plan.append((stride, dilation))
            current *= stride
    return plan


class SeparableConv2d(nn.Sequential):
    """Depthwise 3x3 + BN (+ ReLU), then pointwise 1x1 + BN (+ ReLU).

    ``relu=False`` is TF's pre-activation form (the unit puts a ReLU in front instead);
    parameter names do not depend on it, so one weight mapping covers both forms.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1, relu: bool = False) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["depthwise"] = nn.Conv2d(
            in_ch, in_ch, 3, stride=stride, padding=dilation, dilation=dilation, groups=in_ch, bias=False
        )
        layers["bn_depthwise"] = _bn(in_ch)
        if relu:
            layers["relu_depthwise"] = nn.ReLU(inplace=True)
        layers["pointwise"] = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        layers["bn_pointwise"] = _bn(out_ch)
        if relu:
            layers["relu_pointwise"] = nn.ReLU(inplace=True)
        super().__init__(layers)


class XceptionUnit(nn.Module):
    """Three separable convs (the last one strided) plus a conv, identity or no shortcut.

    ``relu_inside=False`` gives TF's pre-activation unit: ``ReLU -> sepconv`` three
    times, summed with the shortcut of the *un-activated* input, no ReLU after the sum.
    """

    def __init__(
        self,
        in_ch: int,
        depths: tuple[int, int, int],
        stride: int = 1,
        dilation: int = 1,
        skip: Skip = "sum",
        relu_inside: bool = False,
    ) -> None:
        super().__init__()
        if skip == "sum" and (stride != 1 or in_ch != depths[-1]):
            raise ValueError("an identity shortcut needs stride 1 and equal input/output channels")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        ch = in_ch
        for i, depth in enumerate(depths, start=1):
            if not relu_inside:
                # Not in-place: relu1's input is the shortcut's, relu3's input is the low-level feature.
                layers[f"relu{i}"] = nn.ReLU()
            layers[f"sepconv{i}"] = SeparableConv2d(
                ch, depth, stride=stride if i == 3 else 1, dilation=dilation, relu=relu_inside
            )
            ch = depth
        self.residual = nn.Sequential(layers)
        self.skip = skip
        self.shortcut: nn.Sequential | None = None
        if skip == "conv":
            conv = nn.Conv2d(in_ch, depths[-1], 1, stride=stride, bias=False)
            self.shortcut = nn.Sequential(OrderedDict(conv=conv, bn=_bn(depths[-1])))

    def forward_with_sepconv2(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The unit's output and its second separable conv's output (DeepLab's low-level feature)."""
        y, mid = x, x
        for name, layer in self.residual.named_children():
            y = layer(y)
            if name == "sepconv2":
                mid = y
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        elif self.skip == "sum":
            y = y + x
        return y, mid

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_sepconv2(x)[0]


class Xception65(Backbone):
    """The modified aligned Xception-65 of DeepLab v3+ (see the module docstring).

    ``output_stride`` 16 keeps exit block 1 dense (stride 1) and dilates exit block 2
    by 2; 8 also makes entry block 3 dense and dilates the middle flow and exit block
    1 by 2 and exit block 2 by 4; 32 is the plain classification network.
    """

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        plan = unit_strides_and_dilations([stride for _, _, _, stride, *_ in _UNITS], output_stride)
        self.output_stride = output_stride
        self.stem = nn.Sequential(
            OrderedDict(
                conv1_1=nn.Conv2d(3, 32, 3, stride=_STEM_STRIDE, padding=1, bias=False),
                bn1_1=_bn(32),
                relu1_1=nn.ReLU(inplace=True),
                conv1_2=nn.Conv2d(32, 64, 3, padding=1, bias=False),
                bn1_2=_bn(64),
                relu1_2=nn.ReLU(inplace=True),
            )
        )
        flows: dict[str, OrderedDict[str, nn.Module]] = {
            f: OrderedDict() for f in ("entry_flow", "middle_flow", "exit_flow")
        }
        in_ch = 64
        for (flow, name, depths, _, skip, relu_inside), (stride, dilation) in zip(_UNITS, plan, strict=True):
            flows[flow][name] = XceptionUnit(in_ch, depths, stride, dilation, skip, relu_inside)
            in_ch = depths[-1]
        self.entry_flow = nn.Sequential(flows["entry_flow"])
        self.middle_flow = nn.Sequential(flows["middle_flow"])
        self.exit_flow = nn.Sequential(flows["exit_flow"])
        self.feature_info = {"low_level": FeatureInfo(256, 4), "out": FeatureInfo(2048, output_stride)}
        self._init_weights()

    def _init_weights(self) -> None:
        """He init for convs (BN keeps its 1/0 default); replaced by ImageNet weights when pretrained."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stem(x)
        x = self.entry_flow.block1(x)
        x, low_level = self.entry_flow.block2.forward_with_sepconv2(x)
        x = self.exit_flow(self.middle_flow(self.entry_flow.block3(x)))
        return {"low_level": low_level, "out": x}


# --- ImageNet weights -------------------------------------------------------------------------

# timm module -> our module, inside one unit (timm ``blocks.<i>.`` / our ``<flow>.<unit>.``).
_TIMM_UNIT_MODULES = {
    "shortcut.conv": "shortcut.conv",
    "shortcut.bn": "shortcut.bn",
    **{f"stack.conv{i}.conv_dw": f"residual.sepconv{i}.depthwise" for i in (1, 2, 3)},
    **{f"stack.conv{i}.bn_dw": f"residual.sepconv{i}.bn_depthwise" for i in (1, 2, 3)},
    **{f"stack.conv{i}.conv_pw": f"residual.sepconv{i}.pointwise" for i in (1, 2, 3)},
    **{f"stack.conv{i}.bn_pw": f"residual.sepconv{i}.bn_pointwise" for i in (1, 2, 3)},
}

#: timm ``xception65`` module name -> ours; a parameter key is ``<module>.<weight|bias|running_*|...>``.
TIMM_XCEPTION65_MODULES: dict[str, str] = {
    "stem.0.conv": "stem.conv1_1",
    "stem.0.bn": "stem.bn1_1",
    "stem.1.conv": "stem.conv1_2",
    "stem.1.bn": "stem.bn1_2",
    **{
        f"blocks.{i}.{theirs}": f"{prefix}.{ours}"
        for i, prefix in enumerate(UNIT_PREFIXES)
        for theirs, ours in _TIMM_UNIT_MODULES.items()
    },
}

#: timm keys dropped on purpose: the ImageNet classifier.
TIMM_IGNORED_KEYS = ("head.fc.weight", "head.fc.bias")


def convert_timm_xception65(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a timm ``xception65`` state dict to ours; keys not in the table are kept as they are.

    Shortcut entries the model lacks (middle flow, exit block 2) end up as unexpected
    keys, so a checkpoint of a different architecture is reported, not half-loaded.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in TIMM_IGNORED_KEYS:
            continue
        module, _, param = key.rpartition(".")
        out[f"{TIMM_XCEPTION65_MODULES[module]}.{param}" if module in TIMM_XCEPTION65_MODULES else key] = value
    return out


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Load a ``.pth``/``.bin`` (or, with the safetensors package, ``.safetensors``) file."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise _error(
                f"{path} is a safetensors file but the safetensors package is not installed. Run "
                f"`pip install safetensors`, or use the pytorch_model.bin file ({TIMM_WEIGHTS_URL})."
            ) from exc
        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):  # training checkpoints often nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return state


def _error(message: str) -> Exception:
    # Imported here: pretrained.py imports the backbones, so a top-level import could be circular.
    from ..pretrained import PretrainedWeightsError

    return PretrainedWeightsError(message)


def _key_report(kind: str, keys: list[str], shown: int = 5) -> str:
    more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
    return f"{len(keys)} {kind} keys ({', '.join(keys[:shown])}{more})"


def load_xception65_weights(model: Xception65, path: str | Path) -> None:
    """Load ImageNet (or any Xception-65) weights from ``path`` into ``model``.

    Accepts our own ``Xception65.state_dict()`` layout or timm's ``xception65`` layout
    (``pytorch_model.bin`` or ``model.safetensors`` from the Hugging Face repo
    ``timm/xception65.tf_in1k``, no timm needed), told apart by timm's ``stem.0.`` /
    ``blocks.`` prefixes. Every parameter and buffer must be matched exactly (only BN's
    ``num_batches_tracked`` may be absent); otherwise a ``PretrainedWeightsError`` lists
    the missing and unexpected keys.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise _error(
            f"Xception-65 weights file {str(path)!r} does not exist. Download {TIMM_WEIGHTS_URL} on a "
            "machine with internet access and point model.weights at it, or train from scratch with "
            "model.pretrained=false."
        )
    state = _read_state_dict(path)
    if any(k.startswith(("stem.0.", "blocks.")) for k in state):
        state = convert_timm_xception65(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise _error(
            f"{path} does not match Xception-65: {_key_report('missing', missing)}, "
            f"{_key_report('unexpected', unexpected)}. Use our Xception65 state dict or timm's xception65 "
            f"weights ({TIMM_WEIGHTS_URL})."
        )
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise _error(f"{path}: {len(wrong)} Xception-65 weights have the wrong shape: {'; '.join(wrong[:5])}")
    model.load_state_dict({**own, **state})


@dataclass
class Xception65Config:
    name: str = "xception65"


def _load_imagenet(model: nn.Module, weights_file: str | None) -> Provenance:
    """timm's Xception-65 file (no torchvision weights exist): the user passes it as ``model.weights``."""
    from ..weights.catalogue import entries_for_backbone
    from ..weights.resolve import PretrainedWeightsError, identify

    if not weights_file:
        raise PretrainedWeightsError(
            "backbone=xception65 has no torchvision ImageNet weights: download timm's xception65 "
            f"({TIMM_WEIGHTS_URL}) and pass model.weights=/path/to/pytorch_model.bin, "
            "or train from scratch with model.pretrained=false."
        )
    load_xception65_weights(model.backbone, weights_file)
    entries = entries_for_backbone("xception65")
    return identify(Path(weights_file).expanduser(), entries[0] if entries else None, "model.weights")


@register_backbone(
    "xception65",
    schema=Xception65Config,
    preprocess=lambda args: ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),  # the TF-slim / timm weights expect [-1, 1]
    load_imagenet=_load_imagenet,
)
def build_xception65(output_stride: int) -> Xception65:
    return Xception65(output_stride)
