"""Optimizer parameter groups (DeepLab LR multipliers) and the poly schedule."""

from __future__ import annotations

from torch import nn
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ...errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    head_lr_mult: float = 10.0,
    bias_lr_mult: float = 2.0,
    bias_weight_decay: bool = False,
    backbone_lr_mult: float = 1.0,
) -> list[dict]:
    """Split parameters as the DeepLab prototxts do.

    Weights get ``lr``; biases (and other 1-D parameters such as BN affine terms)
    get ``lr * bias_lr_mult`` and, unless ``bias_weight_decay``, no decay; the
    newly initialised classifier (``model.classifier_parameters()``) gets
    ``head_lr_mult`` on top (fc8: x10 weights, x20 bias in v1/v2). ``backbone_lr_mult``
    scales the pretrained encoder's rate alone: fine-tuning ImageNet features with a
    lower rate than the freshly initialised ASPP/decoder keeps what pre-training bought.
    """
    head = {id(p) for p in model.classifier_parameters()}
    encoder = set()
    if backbone_lr_mult != 1.0:
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ConfigError(f"optim.backbone_lr_mult={backbone_lr_mult}: {type(model).__name__} has no backbone")
        encoder = {id(p) for p in backbone.parameters()}
    buckets: dict[tuple[bool, bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            buckets.setdefault((id(p) in head, id(p) in encoder, p.ndim <= 1), []).append(p)
    groups = []
    for (is_head, is_encoder, is_bias), params in sorted(buckets.items()):
        mult = (head_lr_mult if is_head else 1.0) * (bias_lr_mult if is_bias else 1.0)
        mult *= backbone_lr_mult if is_encoder else 1.0
        decay = weight_decay if (not is_bias or bias_weight_decay) else 0.0
        groups.append({"params": params, "lr": lr * mult, "weight_decay": decay})
    return groups


IMPLEMENTATIONS = ("auto", "for_loop", "foreach", "fused")


def impl_kwargs(impl: str) -> dict[str, bool]:
    """torch's three update kernels: a Python loop, one multi-tensor kernel per op, one fused kernel."""
    if impl not in IMPLEMENTATIONS:
        raise ConfigError(f"optim.impl={impl!r}; choose one of {', '.join(IMPLEMENTATIONS)}.")
    return {"auto": {}, "for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]


def build_optimizer(
    name: str, groups: list[dict], lr: float, momentum: float = 0.9, nesterov: bool = False, impl: str = "auto"
) -> Optimizer:
    """SGD with momentum (the papers' recipe) or AdamW (fast from-scratch training)."""
    kwargs = impl_kwargs(impl)
    if name == "sgd":
        return SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, **kwargs)
    if name == "adamw":
        return AdamW(groups, lr=lr, **kwargs)
    raise ConfigError(f"optim.name={name!r} is unknown; choose one of {', '.join(OPTIMIZERS)}.")


def poly_scheduler(optimizer: Optimizer, max_iters: int, power: float = 0.9, min_lr: float = 0.0) -> LambdaLR:
    """``lr = (base_lr - min_lr) * (1 - iter / max_iters) ** power + min_lr``, stepped once per iteration.

    ``min_lr`` is mmsegmentation's ``PolyLR(eta_min=1e-4)`` (mmcv's ``min_lr``): an absolute floor
    that every parameter group decays towards, whatever its own base rate. 0 is the DeepLab papers' poly.
    """

    def factor(base: float):  # noqa: ANN202 - one lambda per group: the floor is absolute, not a ratio
        return lambda it: ((base - min_lr) * max(0.0, 1.0 - it / max_iters) ** power + min_lr) / base

    if min_lr == 0.0:
        return LambdaLR(optimizer, lambda it: max(0.0, 1.0 - it / max_iters) ** power)
    return LambdaLR(optimizer, [factor(group["lr"]) for group in optimizer.param_groups])
