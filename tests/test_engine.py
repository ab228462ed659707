"""Training step, gradient accumulation and start-up config validation."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from deeplab_cli._paths import config_dir
from deeplab_cli.config import checks, datasets, models
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.engine.train.loop import StepSettings, group_micro_batches, train_step
from deeplab_cli.engine.train.optim import build_optimizer, param_groups, poly_scheduler
from deeplab_cli.errors import ConfigError
from deeplab_cli.models.builder import ModelSpec, build_model


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec(
        "vgg16", "largefov", 5, backbone_args={"width_mult": 0.125}, head_args={"channels": 16, "dropout": 0}
    )
    return build_model(spec).double()


def _step(model, micro_batches) -> None:
    groups = param_groups(model, 0.1, 5e-4, head_lr_mult=10, bias_lr_mult=2)
    optimizer = build_optimizer("sgd", groups, 0.1, momentum=0.9)
    train_step(
        model, micro_batches, optimizer, poly_scheduler(optimizer, 10), torch.device("cpu"), StepSettings("nearest")
    )


def test_accumulated_micro_batches_equal_one_big_batch() -> None:
    torch.manual_seed(1)
    images = torch.randn(4, 3, 33, 33, dtype=torch.float64)
    labels = torch.randint(0, 5, (4, 33, 33))  # no 255: every micro-batch has the same pixel count
    big, accumulated = _model(), _model()
    _step(big, [(images, labels)])
    _step(accumulated, [(images[:2], labels[:2]), (images[2:], labels[2:])])
    for (name, a), b in zip(big.named_parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=name)
    untouched = _model()
    assert not torch.equal(untouched.head.fc8.weight, big.head.fc8.weight)


def test_group_micro_batches_chunks_and_drops_index() -> None:
    loader = [(torch.full((1,), i), torch.full((1,), -i), i) for i in range(6)]
    chunks = list(group_micro_batches(loader, 3))
    assert len(chunks) == 2 and all(len(c) == 3 for c in chunks)
    assert [int(x) for x, _ in chunks[1]] == [3, 4, 5]


def _cfg(*overrides: str):
    return compose_train(list(overrides))


@pytest.mark.parametrize(
    "override, needles",
    [
        ("trainer.label_policy=bilinear", ["trainer.label_policy", "nearest", "upsample"]),
        ("resume=maybe", ["resume", "auto"]),
        ("model.output_stride=12", ["model.output_stride=12", "8, 16, 32"]),
        ("model.num_classes=3", ["model.num_classes=3", "dataset.num_classes=21"]),
        ("trainer.batch_size=0", ["trainer.batch_size=0"]),
        ("dataset.scale_range=[1.5,0.5]", ["dataset.scale_range"]),
    ],
)
def test_validate_rejects_impossible_values(override: str, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        checks.validate(_cfg(override))
    for needle in needles:
        assert needle in str(info.value)


def test_default_config_is_valid_and_is_the_quickstart() -> None:
    cfg = _cfg()
    checks.validate(cfg)
    assert cfg.dataset.name == "synthetic" and cfg.model.name == "quickstart" and cfg.experiment is None
    assert cfg.model.pretrained is False  # the default run must work offline
    assert (cfg.backbone.name, cfg.backbone.width_mult, cfg.head.name, cfg.optim.name) == (
        "vgg16",
        0.25,
        "largefov",
        "adamw",
    )


def test_voc_experiment_is_the_paper_recipe() -> None:
    cfg = _cfg("experiment=deeplabv1_largefov_voc")
    checks.validate(cfg)
    assert cfg.dataset.name == "voc_aug" and cfg.dataset.train_split == "train_aug"
    assert cfg.dataset.mask_dir == "SegmentationClassAug"
    assert cfg.model.pretrained and cfg.optim.name == "sgd"
    assert (cfg.optim.lr, cfg.optim.head_lr_mult, cfg.optim.bias_lr_mult) == (1e-3, 10.0, 2.0)
    assert (cfg.backbone.width_mult, cfg.backbone.batch_norm, cfg.backbone.avg_pool) == (1.0, False, True)
    assert (cfg.head.dilation, cfg.head.channels, cfg.head.dropout) == (12, 1024, 0.5)
    assert models.model_spec(cfg).num_classes == 21
    assert sum(p.numel() for p in models.make_model(cfg, pretrained=False).parameters()) == 20_505_429


def test_freeze_bn_keeps_statistics_and_affine_terms() -> None:
    torch.manual_seed(0)
    spec = ModelSpec("vgg16", "largefov", 5, backbone_args={"width_mult": 0.125, "batch_norm": True},
                     head_args={"channels": 16})  # fmt: skip
    model = build_model(spec)
    bn = model.backbone.features.bn1_1
    with torch.no_grad():
        bn.running_mean.uniform_()
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    from deeplab_cli.engine.train.loop import freeze_batchnorm

    freeze_batchnorm(model)
    groups = param_groups(model, 0.1, 5e-4)
    assert not any(p is bn.weight for g in groups for p in g["params"])
    optimizer = build_optimizer("sgd", groups, 0.1)
    batch = [(torch.randn(2, 3, 33, 33), torch.randint(0, 5, (2, 33, 33)))]
    train_step(
        model,
        batch,
        optimizer,
        poly_scheduler(optimizer, 10),
        torch.device("cpu"),
        StepSettings("nearest", freeze_bn=True),
    )
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    conv = model.backbone.features.conv1_1.weight
    assert conv.requires_grad and not bn.weight.requires_grad


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (config_dir() / "experiment").glob("*_voc.yaml")))
def test_every_voc_experiment_composes_and_validates(experiment: str) -> None:
    cfg = _cfg(f"experiment={experiment}")
    checks.validate(cfg)
    spec = models.model_spec(cfg)
    assert spec.num_classes == cfg.dataset.num_classes
    assert cfg.model.pretrained and cfg.dataset.name == "voc_aug" and cfg.optim.name == "sgd"
    assert cfg.model.name == experiment.removesuffix("_voc")


def test_cityscapes_ade20k_and_camvid_recipes() -> None:
    r101 = _cfg("experiment=deeplabv3plus_resnet101_cityscapes")
    checks.validate(r101)
    assert (r101.dataset.name, r101.dataset.crop_size, r101.dataset.crop_width, r101.trainer.batch_size) == (
        "cityscapes",
        512,
        1024,
        8,
    )
    assert (r101.optim.lr, r101.trainer.max_iters, r101.model.output_stride, r101.model.num_classes) == (
        0.01,
        80000,
        8,
        19,
    )
    xc = _cfg("experiment=deeplabv3plus_xception65_cityscapes")
    assert (xc.dataset.crop_size, xc.trainer.max_iters, xc.model.output_stride, xc.head.separable) == (
        769,
        90000,
        16,
        True,
    )
    x71 = _cfg("experiment=deeplabv3plus_xception71_cityscapes")
    checks.validate(x71)
    assert (x71.backbone.name, x71.backbone.model, x71.head.separable, x71.dataset.crop_size) == (
        "timm", "xception71", True, 769,
    )  # fmt: skip
    assert datasets.normalisation(x71) == ([0.5] * 3, [0.5] * 3, False)  # timm's TF-ported weights: [-1, 1]
    ade = _cfg("experiment=deeplabv3plus_resnet101_ade20k")
    assert (ade.dataset.name, ade.model.num_classes, ade.dataset.reduce_zero_label, ade.trainer.max_iters) == (
        "ade20k",
        150,
        True,
        160000,
    )
    assert (ade.dataset.crop_size, ade.trainer.batch_size) == (512, 16)
    cpu = _cfg("experiment=camvid_cpu")
    checks.validate(cpu)
    assert (cpu.dataset.name, cpu.model.num_classes, cpu.model.pretrained, cpu.trainer.precision) == (
        "camvid",
        11,
        False,
        "bf16",
    )
    tuned = _cfg("experiment=camvid_cpu_pretrained")
    checks.validate(tuned)
    datasets.resolve_preprocess(tuned)
    assert (tuned.model.name, tuned.backbone.model, tuned.model.pretrained, tuned.trainer.max_iters) == (
        "deeplabv3plus_efficientnet_lite0", "tf_efficientnet_lite0", True, 900,
    )  # fmt: skip
    assert list(tuned.model.preprocess.mean) == list(tuned.model.preprocess.std) == [0.5] * 3  # the weights' own
    # everything but the model and the schedule is the from-scratch recipe's
    for key in ("dataset.crop_size", "dataset.scale_range", "head.channels", "optim.lr", "trainer.batch_size",
                "trainer.precision", "trainer.channels_last", "trainer.label_policy"):  # fmt: skip
        assert OmegaConf.select(tuned, key) == OmegaConf.select(cpu, key), key


def test_paper_recipes() -> None:
    v2 = _cfg("experiment=deeplabv2_resnet101_msc_voc")
    assert (v2.trainer.batch_size, v2.optim.lr, v2.trainer.max_iters, v2.trainer.freeze_bn) == (10, 2.5e-4, 20000, True)
    assert v2.scales.mode == "msc" and v2.trainer.label_policy == "nearest"
    v3p = _cfg("experiment=deeplabv3plus_resnet101_voc")
    assert (v3p.dataset.crop_size, v3p.trainer.batch_size, v3p.optim.lr, v3p.model.output_stride) == (
        513,
        16,
        0.007,
        16,
    )
    assert v3p.trainer.label_policy == "upsample" and not v3p.trainer.freeze_bn


def test_v3plus_on_a_backbone_without_low_level_features_is_rejected() -> None:
    """Every built-in backbone has a stride-4 feature now; a timm ViT does not, and build_model says so."""
    from deeplab_cli.errors import ConfigError

    with pytest.raises(ConfigError, match=r"vit_small_patch16_224 has no stride-4 feature.*v3plus"):
        build_model(ModelSpec("timm", "v3plus", 21, 16, {"model": "vit_small_patch16_224"}))


def test_xception_pretrained_without_weights_file_says_where_to_get_it() -> None:
    from deeplab_cli.models.pretrained import PretrainedWeightsError

    with pytest.raises(PretrainedWeightsError) as info:
        build_model(ModelSpec("xception65", "v3plus", 21, output_stride=16), pretrained=True)
    message = str(info.value)
    assert "xception65" in message and "model.weights=" in message and "huggingface.co/timm" in message
    assert "model.pretrained=false" in message
