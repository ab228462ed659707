"""The contract every head follows, so the builder, the optimiser and attention-to-scale can use any of them."""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn
from torch.nn import Parameter


class Head(nn.Module):
    """Backbone features (``{name: tensor}``, the names its registration ``needs``) -> class logits.

    ``classifier_parameters`` are the layers trained from scratch in the DeepLab recipes
    (the classifier): they get ``optim.head_lr_mult``. The default is the ``classifier``
    layer, the name torchvision's and our heads give the last conv; a head without one
    overrides it. Heads that also support attention-to-scale expose ``features``,
    ``classify`` and ``out_channels`` (see :class:`~.largefov.LargeFOVHead`).
    """

    classifier: nn.Module

    def classifier_parameters(self) -> Iterator[Parameter]:
        return self.classifier.parameters()

    def forward(self, feats: dict[str, Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
