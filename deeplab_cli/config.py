"""Structured-config schemas: every key has a type, so typos fail at start-up.

Hydra merges the YAML files of ``configs/`` into these dataclasses before any data
is read; an unknown key (``optim.lrr``) or a wrong type (``trainer.max_iters=abc``)
is reported with its full key. Group options with their own keys (backbones,
heads) register their own schema and select it from their YAML defaults list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING


@dataclass
class PreprocessConfig:
    """Input normalisation the weights expect: ``((bgr ? image[..., ::-1] : image) / 255 - mean) / std``.

    It belongs to the weights, not to the data: it lives under ``model``, is stored in
    every checkpoint, comes from the importer for other projects' files, and no
    ``dataset=`` override can change it (only an explicit ``model.preprocess.*``).
    ``mean``/``std`` are in 0-1 units, in the channel order after the optional flip.
    ``null`` (the default) means the backbone's own: what its ImageNet weights were
    trained with (ImageNet statistics for torchvision's, [0.5]*3 for Xception-65, timm's
    pretrained config for ``backbone=timm``); training writes the values it used into
    the checkpoint, so a later change of default never changes a trained model.
    """

    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    bgr: bool = False


@dataclass
class ModelConfig:
    name: str = MISSING
    num_classes: int = II("dataset.num_classes")  # the dataset's label set unless set explicitly
    output_stride: int = 8
    pretrained: bool = False
    weights: Optional[str] = None
    init_from: Optional[str] = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


@dataclass
class VGG16Config:
    name: str = "vgg16"
    avg_pool: bool = True
    batch_norm: bool = False
    width_mult: float = 1.0


@dataclass
class ResNetConfig:
    name: str = "resnet101"
    multi_grid: Optional[list[int]] = None


@dataclass
class MobileNetV2Config:
    name: str = "mobilenet_v2"


@dataclass
class ImportedBackboneConfig:
    """Backbones that reproduce other projects' computation for imported checkpoints."""

    name: str = MISSING


@dataclass
class Xception65Config:
    name: str = "xception65"


@dataclass
class TimmBackboneConfig:
    """``backbone=timm``: any timm model by name (``NAME`` or ``NAME.TAG``), built with ``features_only``."""

    name: str = "timm"
    model: str = MISSING  # e.g. efficientnet_b0, xception71, convnext_tiny.fb_in22k_ft_in1k
    kwargs: dict[str, Any] = field(default_factory=dict)  # more timm.create_model arguments (drop_path_rate, ...)


@dataclass
class ASPPv2Config:
    name: str = "aspp_v2"
    rates: list[int] = field(default_factory=lambda: [6, 12, 18, 24])
    form: str = "fc"
    channels: int = 1024
    dropout: float = 0.5


@dataclass
class ASPPv3Config:
    name: str = "aspp_v3"
    rates: list[int] = field(default_factory=lambda: [6, 12, 18])
    channels: int = 256


@dataclass
class V3PlusConfig:
    name: str = "v3plus"
    rates: list[int] = field(default_factory=lambda: [6, 12, 18])
    channels: int = 256
    low_level_out: int = 48
    decoder_convs: int = 2
    separable: bool = False


@dataclass
class LargeFOVConfig:
    name: str = "largefov"
    dilation: int = 12
    channels: int = 1024
    dropout: float = 0.5


@dataclass
class ScalesConfig:
    mode: str = "single"
    factors: list[float] = field(default_factory=lambda: [1.0])
    fusion: str = "max"
    esup: bool = True
    input_resize: str = "size"


@dataclass
class SyntheticConfig:
    num_train: int = 300
    num_val: int = 60
    min_size: int = 64
    max_size: int = 96
    boundary: int = 1
    seed: int = 0


@dataclass
class DatasetConfig:
    """Where the images and masks are, what mask values mean, and how training crops them.

    The layout keys (``image_dir``, ``mask_dir``, suffixes, ``split_list``) default to
    VOC's; ``{split}`` in them stands for the split name. ``split_list: null`` pairs
    every image under ``image_dir`` with the mask of the same relative stem. The
    label keys map stored mask values to classes (see ``data/labels.py``).
    """

    name: str = MISSING
    root: str = MISSING
    family: str = "generic"  # voc | cityscapes | ade20k | camvid | generic: root lookup, prepare hint, export
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    image_dir: str = "JPEGImages"
    mask_dir: str = "SegmentationClass"
    image_suffix: str = ".jpg"
    mask_suffix: str = ".png"
    split_list: Optional[str] = "ImageSets/Segmentation/{split}.txt"
    num_classes: int = 21
    label_map: Optional[Any] = None  # raw value -> class; Any: Hydra cannot override a None Dict[int, int]
    reduce_zero_label: bool = False
    ignore_values: list[int] = field(default_factory=list)
    color_map: Optional[Any] = None
    class_names: Optional[list[str]] = None
    palette: Optional[list[list[int]]] = None
    crop_size: int = 321
    crop_width: Optional[int] = None  # null: square crops; else crops are crop_size x crop_width (height x width)
    scale_range: list[float] = field(default_factory=lambda: [0.5, 1.5])
    flip: bool = True
    num_workers: int = 2
    subset: Optional[int] = None
    on_error: str = "raise"
    synthetic: Optional[SyntheticConfig] = None
    folds: Optional[str] = None  # a folder deeplab-split wrote; with fold=i, train/val are its fold i lists
    fold: Optional[int] = None


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    head_lr_mult: float = 10.0
    backbone_lr_mult: float = 1.0  # the encoder's LR relative to optim.lr (fine-tuning: below 1)
    bias_lr_mult: float = 2.0
    bias_weight_decay: bool = False
    poly_power: float = 0.9
    impl: str = "auto"


@dataclass
class TrainerConfig:
    max_iters: int = 6000
    batch_size: int = 10
    accumulate: int = 1
    val_interval: int = 1000
    log_interval: int = 20
    num_vis_images: int = 4
    label_policy: str = "nearest"
    freeze_bn: bool = False
    checkpoint_interval: Optional[int] = None
    on_nonfinite: str = "stop"
    grad_clip: Optional[float] = None
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = True
    sync_bn: bool = False
    device: str = "auto"
    seed: int = 0
    progress: bool = True


@dataclass
class LossConfig:
    """Cross-entropy options for imbalanced classes (see ``data/class_weights.py``, ``engine/losses.py``)."""

    class_weights: Optional[Any] = None  # null | median_frequency | inverse_frequency | [w0, w1, ...]
    ohem: bool = False  # online hard example mining: keep pixels whose true-class probability < ohem_thresh
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000  # ...but at least this many (the hardest) per process and micro-batch


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    backbone: Any = MISSING
    head: Any = MISSING
    scales: ScalesConfig = field(default_factory=ScalesConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    experiment: Optional[Any] = None
    resume: str = "false"


@dataclass
class CRFConfig:
    """DenseCRF post-processing (``crf=none`` switches it off)."""

    name: str = "none"
    iterations: int = 10
    bi_w: float = 4.0
    bi_xy_std: float = 67.0
    bi_rgb_std: float = 3.0
    pos_w: float = 3.0
    pos_xy_std: float = 1.0
    workers: Optional[int] = None


@dataclass
class EvalOptions:
    split: Optional[str] = None
    num_workers: int = 2
    batch_size: int = 1
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    mode: str = "whole"  # whole | slide: overlapping windows, logits averaged (large images, little memory)
    window: list[int] = field(default_factory=lambda: [769, 769])  # slide: window (height, width)
    stride: list[int] = field(default_factory=lambda: [513, 513])  # slide: step between windows (height, width)
    trimap: list[int] = field(default_factory=list)
    export: Optional[str] = None
    cache: str = "auto"
    cache_dir: str = "~/.cache/deeplab-cli/probabilities"
    plots: bool = True
    progress: bool = True


@dataclass
class EvalConfig(TrainConfig):
    checkpoint: str = MISSING
    save_predictions: bool = False
    eval: EvalOptions = field(default_factory=EvalOptions)
    crf: CRFConfig = field(default_factory=CRFConfig)


@dataclass
class PredictConfig(EvalConfig):
    input: str = MISSING
    output: Optional[str] = None
    overlay_alpha: float = 0.5


@dataclass
class ExportVerifyConfig:
    input: Optional[str] = None  # images (file, folder, glob) to compare on; null: generated test images
    sizes: list[list[int]] = field(default_factory=lambda: [[321, 321], [360, 480], [97, 131]])
    atol: float = 1e-3  # allowed difference of the outputs (logits / probabilities): atol + rtol * max |output|
    rtol: float = 1e-4
    min_agreement: float = 0.9999  # smallest allowed share of pixels with the same predicted class


@dataclass
class ExportConfig(EvalConfig):
    """``deeplab-export``: the checkpoint keys of evaluation and what to write."""

    format: str = "onnx"
    out: Optional[str] = None
    opset: int = 18
    include_preprocess: bool = True
    output: str = "logits"
    dynamic: bool = True
    verify: ExportVerifyConfig = field(default_factory=ExportVerifyConfig)


#: Keys that older versions kept under ``dataset`` and that now live under ``model.preprocess``.
MOVED_TO_PREPROCESS = ("mean", "std", "bgr")


@dataclass
class CheckDatasetConfig(DatasetConfig):
    split: Optional[Any] = None  # deeplab-check-data: the same as splits= (one name or a list)


@dataclass
class CheckDataConfig:
    """``deeplab-check-data``: the dataset keys of training (all of them overridable) and what to check."""

    dataset: CheckDatasetConfig = field(default_factory=CheckDatasetConfig)
    splits: Optional[Any] = None
    workers: Any = 8
    progress: bool = True


@dataclass
class SplitConfig:
    """``deeplab-split``: the dataset keys of training and how to cut it into k folds."""

    dataset: CheckDatasetConfig = field(default_factory=CheckDatasetConfig)
    k: Any = 5
    seed: int = 0
    group: Optional[str] = None
    splits: Optional[Any] = None
    out: Optional[str] = None
    overwrite: bool = False
    workers: Any = 8
    progress: bool = True


def migrate_stored_config(stored: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config in today's layout (a copy): ``dataset.mean/std/bgr`` become ``model.preprocess``,
    a dataset without ``family`` is VOC's (the only layout before there was a choice), and ADE20K's test
    split is its test images, not the validation ones.

    Checkpoints written before preprocessing moved to the model keep their
    normalisation this way; a config that already has ``model.preprocess`` wins.
    """
    stored = {**stored}
    dataset = dict(stored.get("dataset") or {})
    if dataset and "family" not in dataset:  # written before other layouts existed: VOC's
        dataset["family"] = "voc"
        stored["dataset"] = dataset
    if dataset.get("family") == "ade20k" and dataset.get("test_split") == "validation":
        # the ADE20K preset once named the validation images its test split, so eval.export=labels wrote
        # validation predictions for the server; the test images are images/testing (deeplab-prepare --test)
        dataset["test_split"] = "testing"
        stored["dataset"] = dataset
    moved = {k: dataset.pop(k) for k in MOVED_TO_PREPROCESS if k in dataset}
    if moved:
        stored["dataset"] = dataset
        model = dict(stored.get("model") or {})
        model.setdefault("preprocess", {**asdict(PreprocessConfig()), **moved})
        stored["model"] = model
    return stored


def register_configs() -> None:
    """Make the schemas available to the YAML defaults lists (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="predict_schema", node=PredictConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="check_data_schema", node=CheckDataConfig)
    cs.store(name="split_schema", node=SplitConfig)
    cs.store(group="backbone", name="vgg16_schema", node=VGG16Config)
    cs.store(group="backbone", name="resnet_schema", node=ResNetConfig)
    cs.store(group="backbone", name="mobilenet_v2_schema", node=MobileNetV2Config)
    cs.store(group="backbone", name="xception65_schema", node=Xception65Config)
    cs.store(group="backbone", name="imported_schema", node=ImportedBackboneConfig)
    cs.store(group="backbone", name="timm_schema", node=TimmBackboneConfig)
    cs.store(group="head", name="largefov_schema", node=LargeFOVConfig)
    cs.store(group="head", name="aspp_v2_schema", node=ASPPv2Config)
    cs.store(group="head", name="aspp_v3_schema", node=ASPPv3Config)
    cs.store(group="head", name="v3plus_schema", node=V3PlusConfig)
