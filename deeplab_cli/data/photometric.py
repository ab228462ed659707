"""mmsegmentation's ``PhotoMetricDistortion``: brightness, contrast, saturation and hue, each with probability 0.5.

torchvision's ``ColorJitter`` is a different transform (multiplicative brightness,
contrast around the mean, saturation blended with grey, random order), so the
mmsegmentation recipes need this one to be the published ones. The steps, ranges and
order follow ``mmseg/datasets/transforms/transforms.py``:

1. brightness: add ``U(-32, 32)``, clip to 0..255, truncate to uint8
2. contrast (half the time here): multiply by ``U(0.5, 1.5)``, clip, truncate
3. saturation: multiply HSV saturation by ``U(0.5, 1.5)`` (clipped at full saturation)
4. hue: shift by an integer ``d`` in ``[-18, 17]`` OpenCV hue units (2 degrees each)
5. contrast (the other half of the time)

It runs on the uint8 image after the crop and flip, before normalisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18  # OpenCV uint8 hue units: 180 per turn


def _truncate(x: Tensor) -> Tensor:
    """``np.clip(x, 0, 255).astype(np.uint8)``: clip, then drop the fraction."""
    return x.clamp(0, 255).to(torch.uint8)


def scale_saturation(image: Tensor, alpha: float) -> Tensor:
    """Multiply the HSV saturation of a uint8 RGB image by ``alpha``, keeping hue and value.

    With V = max and m = min of a pixel's channels, S = (V - m) / V, and each channel is
    ``V - (V - c)``, a fixed share of ``V * S`` for a given hue. So scaling S by ``alpha``
    (capped where S would pass 1) is ``c' = V - (V - c) * min(alpha, V / (V - m))``.
    """
    x = image.float()
    v = x.amax(dim=-3, keepdim=True)
    m = x.amin(dim=-3, keepdim=True)
    cap = torch.where(v > m, v / (v - m).clamp(min=1e-6), torch.full_like(v, alpha))
    out = v - (v - x) * torch.minimum(torch.full_like(v, alpha), cap)
    return out.round().clamp(0, 255).to(torch.uint8)


class PhotoMetricDistortion(v2.Transform):
    """The four distortions in mmsegmentation's order, drawn from torch's RNG (seeded per sample)."""

    _transformed_types = (tv_tensors.Image,)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        def coin() -> bool:
            return bool(torch.randint(2, ()))

        def uniform(low: float, high: float) -> float:
            return low + (high - low) * float(torch.rand(()))

        params: dict[str, Any] = {}
        if coin():
            params["brightness"] = uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
        params["contrast_first"] = coin()
        if coin():
            params["contrast"] = uniform(*CONTRAST_RANGE)
        if coin():
            params["saturation"] = uniform(*SATURATION_RANGE)
        if coin():
            params["hue"] = int(torch.randint(-HUE_DELTA, HUE_DELTA, ()))
        return params

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if inpt.dtype != torch.uint8:
            raise TypeError(f"PhotoMetricDistortion expects a uint8 image (0..255), got {inpt.dtype}")
        x = inpt.as_subclass(Tensor)
        if "brightness" in params:
            x = _truncate(x.float() + params["brightness"])
        if params["contrast_first"] and "contrast" in params:
            x = _truncate(x.float() * params["contrast"])
        if "saturation" in params:
            x = scale_saturation(x, params["saturation"])
        if "hue" in params:
            x = F.adjust_hue(x, params["hue"] / 180.0)
        if not params["contrast_first"] and "contrast" in params:
            x = _truncate(x.float() * params["contrast"])
        return tv_tensors.wrap(x, like=inpt)
