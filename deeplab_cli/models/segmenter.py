"""The assembled model: backbone + head, with a torchvision-style output dict."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from torch import Tensor, nn
from torch.nn import Parameter

from .backbones.base import Backbone


class DeepLab(nn.Module):
    """Backbone + head returning ``{"out": logits}`` at the backbone's output stride.

    The dict output matches torchvision's segmentation models and leaves room for
    extra per-scale logits (multi-scale training adds more entries) without changing
    the training loop's contract.
    """

    def __init__(
        self, backbone: Backbone, head: nn.Module, num_classes: int, aux_head: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        if aux_head is not None:  # only then: checkpoints without one keep their exact key set
            self.aux_head = aux_head

    @property
    def output_stride(self) -> int:
        return self.backbone.feature_info["out"].stride

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """``{"out": logits}``; in training mode with an auxiliary head also ``"aux_head"`` (its logits).

        The auxiliary head runs only while training, so evaluation, prediction and export
        (all in eval mode) neither compute nor return it.
        """
        feats = self.backbone(x)
        out = OrderedDict(out=self.head(feats))
        aux = getattr(self, "aux_head", None)
        if aux is not None and self.training:
            out["aux_head"] = aux(feats)
        return out

    def classifier_parameters(self) -> Iterator[Parameter]:
        """Parameters that the recipes train with the head LR multiplier."""
        return self.head.classifier_parameters()


def inference_model(model: nn.Module) -> nn.Module:
    """``model`` without its training-only parts (the auxiliary head), sharing every other module.

    Exports trace the eval-mode forward, which never runs the auxiliary head, but
    ``torch.export``/ONNX would still carry its weights; this view leaves them out.
    """
    if isinstance(model, DeepLab) and getattr(model, "aux_head", None) is not None:
        return DeepLab(model.backbone, model.head, model.num_classes).train(model.training)
    return model
