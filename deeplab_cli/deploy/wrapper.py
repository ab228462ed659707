"""The model a deployment runs: raw pixels in, logits / probabilities / labels at the input size out.

Training and ``deeplab-predict`` normalise images outside the network and upsample the
logits after it (``engine/eval/inference.py``). An exported file has no such code around
it, so :class:`DeployModel` puts both inside the graph, exactly as the PyTorch path
does them: ``/255``, optional RGB->BGR, ``(x - mean) / std`` (0..1 units, as
``model.preprocess`` stores them), the network, then bilinear upsampling with
``align_corners=False`` to the input's height and width, and the chosen output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.segmenter import inference_model

OUTPUTS = ("logits", "probabilities", "labels")


class DeployModel(nn.Module):
    """``model`` (returning ``{"out": logits}``) with preprocessing and upsampling in the graph.

    With ``include_preprocess`` the input is ``uint8`` RGB, (N, 3, H, W), 0..255, as
    images decode; without it, the float32 tensor the network itself takes. Outputs:
    float32 ``logits`` or ``probabilities`` (N, C, H, W), or ``labels`` (N, H, W) int64.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        bgr: bool = False,
        include_preprocess: bool = True,
        output: str = "logits",
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}; choose one of {', '.join(OUTPUTS)}")
        self.model = inference_model(model)  # no auxiliary head in an exported file
        self.include_preprocess = include_preprocess
        self.bgr = bgr
        self.output = output
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, image: Tensor) -> Tensor:
        x = image.to(torch.float32) / 255.0
        if self.bgr:
            x = x.flip(1)
        return (x - self.mean) / self.std

    def forward(self, image: Tensor) -> Tensor:
        x = self.preprocess(image) if self.include_preprocess else image
        logits = self.model(x)["out"]
        logits = F.interpolate(logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.output == "probabilities":
            return logits.softmax(1)
        if self.output == "labels":
            return logits.argmax(1)
        return logits
