"""Every value of the three published-recipe presets against the source it copies, one fixture line per value.

Each fixture value names the file and line it was read from:
- mmsegmentation 1.x at open-mmlab/mmsegmentation@3f8d34ee (``configs/_base_/models/deeplabv3plus_r50-d8.py``,
  ``configs/_base_/datasets/cityscapes.py``), @46723a95 (``schedules/schedule_80k.py``), @229a6c8d
  (``schedules/schedule_160k.py``), @f6c5caa6 (``datasets/ade20k.py``), @056edc8e
  (``mmseg/datasets/transforms/transforms.py``, ``PhotoMetricDistortion``) and the config names
  ``deeplabv3plus_r101-d8_4xb2-80k_cityscapes-512x1024`` / ``..._4xb4-160k_ade20k-512x512`` (GPUs x per-GPU batch);
- TensorFlow DeepLab at tensorflow/models@1ad6b48f (``research/deeplab/g3doc/cityscapes.md``) and @0307688c
  (``research/deeplab/train.py``), ``research/deeplab/utils/train_utils.py`` (``get_model_learning_rate``).

The README's recipe table lists what differs from these sources and why; ``DIFFERS`` below is that list,
so a value may only disagree with its source when the README says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

from deeplab_cli.config.compose import compose as compose_train

MMSEG_CITYSCAPES = {
    "crop": (512, 1024),  # datasets/cityscapes.py:4 crop_size = (512, 1024)
    "batch": 8,  # datasets/cityscapes.py:43 batch_size=2, x4 GPUs ("4xb2")
    "lr": 0.01,  # schedules/schedule_80k.py:2 SGD lr=0.01
    "momentum": 0.9,  # schedules/schedule_80k.py:2 momentum=0.9
    "weight_decay": 5e-4,  # schedules/schedule_80k.py:2 weight_decay=0.0005
    "decay_norm_and_bias": True,  # schedules/schedule_80k.py:3 OptimWrapper without paramwise_cfg: every parameter
    "iterations": 80000,  # schedules/schedule_80k.py:15 max_iters=80000
    "poly_power": 0.9,  # schedules/schedule_80k.py:9 power=0.9
    "poly_min": 1e-4,  # schedules/schedule_80k.py:8 eta_min=1e-4
    "ratio_range": (0.5, 2.0),  # datasets/cityscapes.py:11 ratio_range=(0.5, 2.0)
    "scale_step": None,  # datasets/cityscapes.py:9 RandomResize: a continuous ratio
    "train_fit": (2048, 1024),  # datasets/cityscapes.py:10,12 scale=(2048, 1024), keep_ratio=True
    "cat_max_ratio": 0.75,  # datasets/cityscapes.py:13 RandomCrop(cat_max_ratio=0.75)
    "flip": True,  # datasets/cityscapes.py:14 RandomFlip(prob=0.5)
    "photometric": True,  # datasets/cityscapes.py:15 PhotoMetricDistortion (defaults: transforms.py __init__)
    "aux_weight": 0.4,  # models/deeplabv3plus_r50-d8.py:51 auxiliary FCNHead loss_weight=0.4
    "aux_channels": 256,  # models/deeplabv3plus_r50-d8.py:43 channels=256
    "aux_dropout": 0.1,  # models/deeplabv3plus_r50-d8.py:46 dropout_ratio=0.1
    "deep_stem": True,  # models/deeplabv3plus_r50-d8.py:15 type='ResNetV1c'
    "output_stride": 8,  # models/deeplabv3plus_r50-d8.py:19-20 dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1)
    "head_channels": 512,  # models/deeplabv3plus_r50-d8.py:29 channels=512
    "aspp_dilations": (12, 24, 36),  # models/deeplabv3plus_r50-d8.py:30 dilations=(1, 12, 24, 36)
    "separable": True,  # models/deeplabv3plus_r50-d8.py:26 DepthwiseSeparableASPPHead
    "project_kernel": 3,  # mmseg/models/decode_heads/aspp_head.py: bottleneck ConvModule(..., 3, padding=1)
    "aspp_dropout": 0.0,  # aspp_head.py: no dropout after the bottleneck
    "classifier_dropout": 0.1,  # models/deeplabv3plus_r50-d8.py:33 dropout_ratio=0.1
    "low_level": 48,  # models/deeplabv3plus_r50-d8.py:32 c1_channels=48
    "pad_label": 255,  # models/deeplabv3plus_r50-d8.py:9 seg_pad_val=255
    "eval_fit": (2048, 1024),  # datasets/cityscapes.py:20 test Resize(scale=(2048, 1024), keep_ratio=True)
    "eval_mode": "whole",  # models/deeplabv3plus_r50-d8.py:54 test_cfg=dict(mode='whole')
}

MMSEG_ADE20K = {
    **MMSEG_CITYSCAPES,
    "crop": (512, 512),  # datasets/ade20k.py:4 crop_size = (512, 512)
    "batch": 16,  # datasets/ade20k.py:27 batch_size=4, x4 GPUs ("4xb4")
    "iterations": 160000,  # schedules/schedule_160k.py:16 max_iters=160000
    "train_fit": (2048, 512),  # datasets/ade20k.py:10,12 RandomResize(scale=(2048, 512), keep_ratio=True)
    "eval_fit": (2048, 512),  # datasets/ade20k.py:20 test Resize(scale=(2048, 512), keep_ratio=True)
    # the rest as Cityscapes': datasets/ade20k.py:11 ratio (0.5, 2.0), :13 cat_max_ratio=0.75, :15 distortion;
    # schedule_160k.py:2 SGD 0.01/0.9/5e-4, :8-9 eta_min 1e-4, power 0.9; the same model file
}

TF_XCEPTION65_CITYSCAPES = {
    "crop": (769, 769),  # g3doc/cityscapes.md:53-54 --train_crop_size=769 (twice)
    "batch": 8,  # DIFFERS: g3doc/cityscapes.md:69 "one needs to use large batch size (> 8)"; no number given
    "lr": 0.01,  # DIFFERS: not stated for Cityscapes (train.py:80-83 names 0.007 for VOC train_aug only)
    "momentum": 0.9,  # train.py:97 momentum 0.9
    "weight_decay": 4e-5,  # train.py:105-107 "use 0.00004 for MobileNet-V2 or Xception"
    "decay_norm_and_bias": False,  # slim: weight decay regularises the conv weights only
    "iterations": 90000,  # g3doc/cityscapes.md:45 --training_number_of_steps=90000
    "poly_power": 0.9,  # train.py:91 learning_power 0.9
    "poly_min": 0.0,  # utils/train_utils.py get_model_learning_rate: polynomial_decay(end_learning_rate=0)
    "ratio_range": (0.5, 2.0),  # train.py:150,153 min_scale_factor 0.5, max_scale_factor 2.0
    "scale_step": 0.25,  # train.py:156 scale_factor_step_size 0.25
    "train_fit": None,  # input_preprocess.py: scales the stored image, no fitting
    "cat_max_ratio": 1.0,  # no crop rule in TF DeepLab
    "flip": True,  # input_preprocess.py: random left-right flip
    "photometric": False,  # no colour distortion in TF DeepLab
    "aux_weight": 0.0,  # no auxiliary head
    "output_stride": 16,  # g3doc/cityscapes.md:51 --output_stride=16
    "aspp_dilations": (6, 12, 18),  # g3doc/cityscapes.md:48-50 --atrous_rates=6/12/18
    "separable": True,  # the v3+ Xception models: atrous separable ASPP and decoder
    "low_level": 48,  # core/feature_extractor / model.py decoder: 48-channel low-level projection
    "pad_label": 255,  # input_preprocess.py: pad_to_bounding_box(label, ..., ignore_label)
    "eval_fit": None,  # g3doc/cityscapes.md eval: --eval_crop_size=1025,2049: the whole 1024x2048 frame
    "eval_mode": "whole",
}

RECIPES = {
    "deeplabv3plus_resnet101_cityscapes": MMSEG_CITYSCAPES,
    "deeplabv3plus_resnet101_ade20k": MMSEG_ADE20K,
    "deeplabv3plus_xception65_cityscapes": TF_XCEPTION65_CITYSCAPES,
}

#: (recipe, item) -> why it differs; each is a row of the README's "differs from the source" column
DIFFERS = {
    ("deeplabv3plus_xception65_cityscapes", "batch"),
    ("deeplabv3plus_xception65_cityscapes", "lr"),
}


def _fit(value: Any) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


def ours(cfg: DictConfig, eval_cfg: DictConfig) -> dict[str, Any]:
    """The recipe's values under the fixture's names."""
    d, o, t, h, m = cfg.dataset, cfg.optim, cfg.trainer, cfg.head, cfg.model
    aux = m.get("aux_head")
    values = {
        "crop": (d.crop_size, d.crop_width or d.crop_size),
        "batch": t.batch_size * t.accumulate,
        "lr": o.lr,
        "momentum": o.momentum,
        "weight_decay": o.weight_decay,
        "decay_norm_and_bias": o.bias_weight_decay,
        "iterations": t.max_iters,
        "poly_power": o.poly_power,
        "poly_min": o.min_lr,
        "ratio_range": tuple(d.scale_range),
        "scale_step": d.scale_step,
        "train_fit": _fit(d.fit_size),
        "cat_max_ratio": d.cat_max_ratio,
        "flip": d.flip,
        "photometric": d.photometric,
        "aux_weight": aux.loss_weight if aux is not None else 0.0,
        "aux_channels": aux.channels if aux is not None else None,
        "aux_dropout": aux.dropout if aux is not None else None,
        "deep_stem": cfg.backbone.name.endswith("_v1c"),
        "output_stride": m.output_stride,
        "head_channels": h.channels,
        "aspp_dilations": tuple(r * 16 // m.output_stride for r in h.rates),
        "separable": h.separable,
        "project_kernel": h.project_kernel,
        "aspp_dropout": h.aspp_dropout,
        "classifier_dropout": h.classifier_dropout,
        "low_level": h.low_level_out,
        "pad_label": 255,  # data/transforms.py PadCrop fills masks with IGNORE_INDEX
        "eval_fit": _fit(d.fit_size),  # evaluation reads the same dataset.fit_size
        "eval_mode": eval_cfg.eval.mode,
    }
    return values


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_values_are_the_sources(recipe: str) -> None:
    cfg = compose_train([f"experiment={recipe}"])
    eval_cfg = compose_train(["checkpoint=unused.pt"], config_name="eval")
    mine = ours(cfg, eval_cfg)
    wrong = {}
    for item, source in RECIPES[recipe].items():
        value = mine[item]
        same = value == pytest.approx(source) if isinstance(source, float) else value == source
        if not same and (recipe, item) not in DIFFERS:
            wrong[item] = (value, source)
    assert not wrong, f"{recipe}: (ours, source) {wrong}"


def test_the_readme_lists_every_difference_and_says_reproduce_only_where_nothing_differs() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("### Recipes for Cityscapes, ADE20K and CamVid") :]
    table = table[: table.index("\n\n", table.index("| `experiment=`"))]
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines() if line.startswith("| `")}
    for recipe in RECIPES:
        assert recipe in rows, recipe
    for recipe, item in DIFFERS:
        assert item in rows[recipe].split("|")[-2], (recipe, item)
