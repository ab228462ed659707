"""Structured-config schemas: every key has a type, so typos fail at start-up.

Hydra merges the YAML files of ``configs/`` into these dataclasses before any data
is read; an unknown key (``optim.lrr``) or a wrong type (``trainer.max_iters=abc``)
is reported with its full key. Group options with their own keys (backbones,
heads) register their own schema and select it from their YAML defaults list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING

from ..data.synthetic import SyntheticSpec
from ..models import registry
from ..postprocess.crf import CRFParams


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
class AuxHeadConfig:
    """``model.aux_head``: mmsegmentation's auxiliary FCN head on ResNet stage 3 (training only)."""

    channels: int = 256
    dropout: float = 0.1
    loss_weight: float = 0.4


@dataclass
class ModelConfig:
    name: str = MISSING
    num_classes: int = II("dataset.num_classes")  # the dataset's label set unless set explicitly
    output_stride: int = 8
    pretrained: bool = False
    weights: Optional[str] = None
    init_from: Optional[str] = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    aux_head: Optional[AuxHeadConfig] = None  # null: none; {} or a dict: the auxiliary FCN head (mmseg: weight 0.4)


@dataclass
class ScalesConfig:
    mode: str = "single"
    factors: list[float] = field(default_factory=lambda: [1.0])
    fusion: str = "max"
    esup: bool = True
    input_resize: str = "size"


@dataclass
class SyntheticConfig:
    """``dataset.synthetic.*``: the generator's settings; their defaults are :class:`SyntheticSpec`'s."""

    num_train: int = SyntheticSpec.num_train
    num_val: int = SyntheticSpec.num_val
    min_size: int = SyntheticSpec.min_size
    max_size: int = SyntheticSpec.max_size
    boundary: int = SyntheticSpec.boundary
    seed: int = SyntheticSpec.seed


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
    scale_step: Optional[float] = None  # null: scales drawn uniformly; 0.25: from low, low+0.25, ..., high (TF DeepLab)
    fit_size: Optional[list[int]] = None  # [long, short]: rescale to fit before the random scale, and evaluate there
    cat_max_ratio: float = 1.0  # <1: re-draw a crop in which one class covers this share or more (mmseg: 0.75)
    photometric: bool = False  # mmsegmentation's PhotoMetricDistortion (brightness, contrast, saturation, hue)
    flip: bool = True
    num_workers: int = 2
    subset: Optional[int] = None
    on_error: str = "raise"
    synthetic: Optional[SyntheticConfig] = None
    folds: Optional[str] = None  # a folder deeplab-split wrote; with fold=i, train/val are its fold i lists
    fold: Optional[int] = None
    # A flat folder (image_dir without {split}, no split_list): this share of its images is held out for
    # validation, stratified by class presence (rounded to 1/k: 0.2 -> 1/5); null: train and val are all of it.
    holdout: Optional[float] = 0.2
    holdout_seed: int = 0
    holdout_group: Optional[str] = None  # a regex; images whose ids share its match stay on one side of the cut
    allow_overlap: bool = False  # true: train and val (or test) may share image files (otherwise an error)
    allow_absent_classes: bool = False  # true: a class with no labelled training pixel is a warning, not an error
    max_skipped: float = 0.1  # on_error=skip: the run fails when more than this share of a split is skipped


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
    min_lr: float = 0.0  # poly decays towards this absolute LR (mmsegmentation's eta_min 1e-4)
    impl: str = "auto"


@dataclass
class TrainerConfig:
    max_iters: int = 6000
    batch_size: int = 10
    accumulate: int = 1
    val_interval: int = 1000
    log_interval: int = 50
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
    """Cross-entropy options for imbalanced classes (see ``data/class_weights.py``, ``engine/train/losses.py``)."""

    class_weights: Optional[Any] = None  # null | median_frequency | inverse_frequency | [w0, w1, ...]
    ohem: bool = False  # online hard example mining: keep pixels whose true-class probability < ohem_thresh
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000  # ...but at least this many (the hardest) per process and micro-batch


@dataclass
class NetworkConfig:
    """What describes a network and its data: the nodes a checkpoint stores and every command reads."""

    model: ModelConfig = field(default_factory=ModelConfig)
    backbone: Any = MISSING
    head: Any = MISSING
    scales: ScalesConfig = field(default_factory=ScalesConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)


@dataclass
class TrainConfig(NetworkConfig):
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    experiment: Optional[Any] = None
    resume: str = "false"


@dataclass
class RuntimeConfig:
    """The ``trainer`` keys that also apply at test time (``deeplab-eval trainer.precision=bf16``); the
    checkpoint's own values are used for any not named on the command line."""

    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False


@dataclass
class CRFConfig:
    """DenseCRF post-processing (``crf=none`` switches it off); the defaults are :class:`CRFParams`' (DeepLab v2's
    for VOC), and each ``configs/crf/*.yaml`` states its paper's values."""

    name: str = "none"
    iterations: int = CRFParams.iterations
    bi_w: float = CRFParams.bi_w
    bi_xy_std: float = CRFParams.bi_xy_std
    bi_rgb_std: float = CRFParams.bi_rgb_std
    pos_w: float = CRFParams.pos_w
    pos_xy_std: float = CRFParams.pos_xy_std
    workers: Optional[int] = None


@dataclass
class EvalOptions:
    split: Optional[str] = None  # default: the checkpoint's dataset.val_split (test for export=voc_test)
    num_workers: int = 2
    batch_size: int = 1  # >1 batches images of different sizes by padding (sorted by size)
    scales: list[float] = field(default_factory=lambda: [1.0])  # test-time scales, e.g. [0.5,0.75,1.0,1.25,1.5,1.75]
    flip: bool = False  # also run the mirrored image; probabilities are averaged
    mode: str = "whole"  # whole | slide: overlapping windows, logits averaged (large images, little memory)
    window: list[int] = field(default_factory=lambda: [769, 769])  # slide: window (height, width)
    stride: list[int] = field(default_factory=lambda: [513, 513])  # slide: step between windows (height, width)
    trimap: list[int] = field(default_factory=list)  # boundary band widths in pixels, e.g. [2,4,8,16,32]
    export: Optional[str] = None  # voc_test: write results/VOC2012/Segmentation/comp6_test_cls/*.png
    cache: str = "auto"  # keep network probabilities for CRF sweeps: auto (on with CRF) | true | false
    cache_dir: str = "${oc.env:DEEPLAB_CACHE_DIR,'~/.cache/deeplab-cli/probabilities'}"
    plots: bool = True  # confusion matrix, per-class IoU and trimap PNGs + TensorBoard
    progress: bool = True


@dataclass
class EvalConfig(NetworkConfig):
    """``deeplab-eval`` (and the base of predict/export): the network and data nodes, which override the
    checkpoint's when named, the test-time ``trainer`` keys, and evaluation's own. Training-only keys
    (``optim``, ``loss``, ``resume``, ``trainer.max_iters``...) are refused, not silently ignored."""

    trainer: RuntimeConfig = field(default_factory=RuntimeConfig)
    checkpoint: str = MISSING
    save_predictions: bool = False
    eval: EvalOptions = field(default_factory=EvalOptions)
    crf: CRFConfig = field(default_factory=CRFConfig)


@dataclass
class PredictConfig(EvalConfig):
    input: str = MISSING
    output: Optional[str] = None  # default: <run dir>/predictions; never an input folder or a dataset root
    overlay_alpha: float = 0.5  # opacity of the class colours in <id>_overlay.jpg
    overwrite: bool = False  # true: replace files in output= that this command did not write, write anywhere
    recursive: bool = False  # a folder input: search its sub-folders too (ids keep them: sub/name)
    on_error: str = "raise"  # raise: an unreadable input stops the command before any output; skip: listed


@dataclass
class ExportVerifyConfig:
    input: Optional[str] = None  # images (file, folder, glob) to compare on; null: generated test images
    #: (height, width) of the generated images
    sizes: list[list[int]] = field(default_factory=lambda: [[321, 321], [360, 480], [97, 131]])
    atol: float = 1e-3  # allowed difference of the outputs (logits / probabilities): atol + rtol * max |output|
    rtol: float = 1e-4
    min_agreement: float = 0.9999  # smallest allowed share of pixels with the same predicted class


@dataclass
class ExportConfig(EvalConfig):
    """``deeplab-export``: the checkpoint keys of evaluation and what to write."""

    format: str = "onnx"  # onnx (run with ONNX Runtime; the export extra) | torch_export (.pt2, torch.export.load)
    out: Optional[str] = None  # default: <run dir>/model.onnx or model.pt2
    overwrite: bool = False  # true: replace an out= file that deeplab-export did not write
    opset: int = 18  # ONNX opset, 18..23
    include_preprocess: bool = True  # input uint8 RGB (N, 3, H, W) 0..255; false: the normalised float tensor
    output: str = "logits"  # logits | probabilities (N, C, H, W float32) | labels (N, H, W int64)
    dynamic: bool = True  # batch, height and width dynamic; false: fixed to the first verify size
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
    splits: Optional[Any] = None  # split names to check; null: [dataset.train_split, dataset.val_split]
    workers: Any = 8  # decoding threads
    progress: bool = True  # tqdm progress bar per split (stderr)


@dataclass
class SplitConfig:
    """``deeplab-split``: the dataset keys of training and how to cut it into k folds."""

    dataset: CheckDatasetConfig = field(default_factory=CheckDatasetConfig)
    k: Any = 5  # number of folds
    seed: int = 0  # tie-breaks and the search's order; the random k-fold it is compared with uses it too
    #: regex on the image id: ids giving the same match (first capture group if any) share a fold
    group: Optional[str] = None
    splits: Optional[Any] = None  # splits pooled into the folds; null: [dataset.train_split]
    out: Optional[str] = None  # folder for fold<i>_train.txt / fold<i>_val.txt / folds.json; null: the run dir
    overwrite: bool = False  # replace the lists of an earlier deeplab-split in out=
    workers: Any = 8  # mask-decoding threads
    progress: bool = True  # tqdm progress bar (stderr)


def register_configs() -> None:
    """Make the schemas available to the YAML defaults lists (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="predict_schema", node=PredictConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="check_data_schema", node=CheckDataConfig)
    cs.store(name="split_schema", node=SplitConfig)
    for group, entries in (("backbone", registry.backbones()), ("head", registry.heads())):
        for name, entry in entries.items():  # each option's schema sits beside its class (models/registry.py)
            if entry.schema is not None:
                cs.store(group=group, name=f"{name}_schema", node=entry.schema)
