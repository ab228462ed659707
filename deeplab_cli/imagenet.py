"""ImageNet's input statistics (torchvision's, 0-1 RGB units): the one definition.

Every torchvision and most timm ImageNet encoders expect ``(image / 255 - mean) / std``
with these values; the data transforms use them as their default, the model builder as
the default ``model.preprocess`` of such backbones. Like ``errors``, this module imports
nothing of ours, so any layer may use it.
"""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
