"""The ``dataset`` node -> layout, label mapping, datasets, loaders, names and palette.

Like the rest of :mod:`deeplab_cli.config`, only commands call this; modules never see ``cfg``.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.utils.data import DataLoader

from ..data.check import check_split
from ..data.class_weights import WEIGHTINGS, check_explicit, count_labels, weights_from_stats
from ..data.collate import collate_kept
from ..data.families import resolve_root
from ..data.folds import check_fold, read_folds_info
from ..data.holdout import Holdout, check_fraction, split_holdout
from ..data.labels import LabelMapping
from ..data.layout import FOLD_SPLIT, DatasetError, Layout
from ..data.palette import VOC_CLASSES, distinct_colormap, voc_colormap
from ..data.sampler import IterationBatchSampler
from ..data.segmentation import SegmentationDataset
from ..data.synthetic import SyntheticSpec, ensure_synthetic_voc
from ..data.transforms import eval_transforms, train_transforms
from ..engine.train.losses import LossSpec
from ..errors import ConfigError
from ..models.builder import backbone_preprocess
from .schema import DatasetConfig

log = logging.getLogger(__name__)


def normalisation(cfg: DictConfig) -> tuple[list[float], list[float], bool]:
    """``(mean, std, bgr)`` of ``model.preprocess``: what the weights expect, whatever the dataset.

    A null ``mean``/``std`` is the backbone's own (see ``models.builder.backbone_preprocess``).
    """
    p = cfg.model.preprocess
    if p.mean is None or p.std is None:
        backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
        mean, std = backbone_preprocess(backbone["name"], backbone)  # type: ignore[index,arg-type]
        return list(p.mean if p.mean is not None else mean), list(p.std if p.std is not None else std), bool(p.bgr)
    return list(p.mean), list(p.std), bool(p.bgr)


def resolve_preprocess(cfg: DictConfig) -> None:
    """Write the values :func:`normalisation` resolves into ``model.preprocess`` (in place).

    Training calls it before anything is saved, so checkpoints hold the values used
    and never depend on a default that a later version or timm release may change.
    """
    mean, std, _ = normalisation(cfg)
    cfg.model.preprocess.mean, cfg.model.preprocess.std = mean, std


def label_mapping(dataset: DictConfig) -> LabelMapping:
    """The ``dataset`` node's label keys as a :class:`LabelMapping` (raises ConfigError on bad values)."""
    label_map = OmegaConf.to_container(dataset.label_map) if dataset.label_map is not None else None
    colours = OmegaConf.to_container(dataset.color_map) if dataset.color_map is not None else None
    return LabelMapping.from_options(
        dataset.num_classes, label_map, dataset.reduce_zero_label, list(dataset.ignore_values), colours
    )


def dataset_root(cfg: DictConfig) -> str:
    """The dataset root, generating the synthetic set on first use."""
    if cfg.dataset.synthetic is not None:
        spec = SyntheticSpec(num_classes=cfg.dataset.num_classes, **cfg.dataset.synthetic)
        ensure_synthetic_voc(cfg.dataset.root, spec)
    return cfg.dataset.root


def train_split(dataset: DictConfig) -> str:
    """``dataset.train_split``, or ``fold<i>_train`` of ``dataset.folds`` when ``dataset.fold=i``."""
    return dataset.train_split if dataset.get("fold") is None else f"fold{dataset.fold}_train"


def val_split(dataset: DictConfig) -> str:
    """``dataset.val_split``, or ``fold<i>_val`` of ``dataset.folds`` when ``dataset.fold=i``."""
    return dataset.val_split if dataset.get("fold") is None else f"fold{dataset.fold}_val"


def dataset_layout(dataset: DictConfig, splits: list[str], root: str | None = None) -> Layout:
    """Where the files of ``splits`` are; the tree is found under ``dataset.root`` (or ``root``).

    A fold split (``fold<i>_train``/``_val`` with ``dataset.folds`` set) stands for the
    splits its images come from, as ``folds.json`` records them. A flat folder (one image
    folder for every split, no lists) gets its training and validation splits from the
    holdout (``dataset.holdout``).
    """
    folds = Path(dataset.folds).expanduser() if dataset.get("folds") else None
    sources = []
    for split in splits:
        if folds is not None and FOLD_SPLIT.fullmatch(split):
            sources += read_folds_info(folds)["splits"]
        else:
            sources.append(split)
    image_dir, mask_dir = flat_dirs(dataset, root or dataset.root, sources) or (dataset.image_dir, dataset.mask_dir)
    image_dirs = [image_dir.format(split=s) for s in dict.fromkeys(sources)]
    tree = resolve_root(dataset.family, root or dataset.root, image_dirs)
    layout = Layout(tree, image_dir, mask_dir, dataset.image_suffix, dataset.mask_suffix, dataset.split_list, folds)
    if layout.is_flat and dataset.get("holdout") is not None and train_split(dataset) != val_split(dataset):
        train, val = holdout_splits(layout, dataset)
        layout = replace(layout, assigned=((train_split(dataset), tuple(train)), (val_split(dataset), tuple(val))))
    return layout


def _without_split(folder: str) -> str | None:
    """``images/{split}`` -> ``images``; None when ``{split}`` is not a whole trailing path component."""
    parts = folder.split("/")
    return "/".join(parts[:-1]) or "." if parts[-1] == "{split}" and "{split}" not in parts[:-1] else None


def flat_dirs(dataset: DictConfig, root: str, splits: list[str]) -> tuple[str, str] | None:
    """``(image_dir, mask_dir)`` without ``/{split}`` when a generic dataset's folders turn out flat.

    ``images/{split}`` + ``masks/{split}`` (the folder preset) pointed at ``images/*.jpg`` +
    ``masks/*.png`` with no split sub-folders: the flat folder is used, and the holdout
    (``dataset.holdout``) cuts the validation split from it.
    """
    if dataset.family != "generic" or dataset.split_list is not None:
        return None
    image_dir, mask_dir = _without_split(dataset.image_dir), _without_split(dataset.mask_dir)
    base = Path(root).expanduser()
    if image_dir is None or mask_dir is None or not (base / image_dir).is_dir():
        return None
    if any((base / dataset.image_dir.format(split=s)).is_dir() for s in splits):
        return None
    names = [p.name for p in (base / image_dir).iterdir() if p.is_file() and not p.name.startswith(".")]
    if not any(n.endswith(dataset.image_suffix) for n in names):
        found = sorted({Path(n).suffix for n in names if Path(n).suffix})[:6]
        if found:
            raise DatasetError(
                f"{base / image_dir} holds the images with no split sub-folders, but its files end in "
                f"{', '.join(found)}, not dataset.image_suffix={dataset.image_suffix!r}; add "
                f"dataset.image_suffix={found[0]} (and dataset.mask_suffix if the masks end otherwise)."
            )
        return None
    if image_dir not in _FLAT_SEEN:
        _FLAT_SEEN.add(image_dir)
        log.info(
            "%s holds the images with no split sub-folders (%s): using image_dir=%s, mask_dir=%s and a holdout split",
            base / image_dir, ", ".join(dataset.image_dir.format(split=s) for s in splits), image_dir, mask_dir,
        )  # fmt: skip
    return image_dir, mask_dir


_FLAT_SEEN: set[str] = set()


def holdout_spec(dataset: DictConfig) -> Holdout:
    return Holdout(float(dataset.holdout), int(dataset.get("holdout_seed", 0)), dataset.get("holdout_group"))


def holdout_splits(layout: Layout, dataset: DictConfig) -> tuple[list[str], list[str]]:
    """(train stems, val stems) of a flat folder; computed once per process for a given folder state."""
    folder, masks = layout.image_folder(""), layout.mask_folder("")
    state = tuple(p.stat().st_mtime_ns if p.is_dir() else 0 for p in (folder, masks))
    mapping = json.dumps(
        {k: OmegaConf.to_container(dataset[k]) if OmegaConf.is_config(dataset[k]) else dataset.get(k)
         for k in ("num_classes", "label_map", "reduce_zero_label", "ignore_values", "color_map")}, sort_keys=True
    )  # fmt: skip
    return _holdout_cached(layout, mapping, state, holdout_spec(dataset))


@functools.lru_cache(maxsize=8)
def _holdout_cached(layout: Layout, mapping: str, state: tuple[int, ...], spec: Holdout) -> tuple[list[str], list[str]]:
    check_fraction(spec.fraction)
    found = check_split(layout, "all", LabelMapping.from_options(**json.loads(mapping)), decode_images=False)
    if not found.stems:
        problem = found.problems[0]
        raise DatasetError(f"{problem.path}: {problem.reason.rstrip('.')}.")
    return split_holdout(found.stems, found.per_image, spec)  # type: ignore[arg-type]


def check_folds(dataset: DictConfig) -> None:
    """``dataset.fold``/``dataset.folds``: a folder deeplab-split wrote for this dataset, and a fold it holds."""
    if dataset.get("fold") is None:
        return
    if not dataset.get("folds"):
        raise ConfigError(
            f"dataset.fold={dataset.fold} needs dataset.folds=DIR, the folder deeplab-split wrote (e.g. "
            f"deeplab-split dataset={dataset.name} k=5 out=folds/{dataset.name}, "
            f"then dataset.folds=folds/{dataset.name})."
        )
    info = read_folds_info(Path(dataset.folds).expanduser())
    if info.get("dataset") != dataset.name or info.get("num_classes") != dataset.num_classes:
        raise ConfigError(
            f"dataset.folds={dataset.folds} was made for dataset {info.get('dataset')} "
            f"({info.get('num_classes')} classes), not dataset={dataset.name} ({dataset.num_classes} classes); "
            "point dataset.folds at this dataset's folds, or run deeplab-split for it."
        )
    check_fold(dataset.fold, int(info["k"]), str(dataset.folds))


def layout_for(cfg: DictConfig, *splits: str) -> Layout:
    return dataset_layout(cfg.dataset, list(splits), dataset_root(cfg))


def class_names(cfg: DictConfig) -> list[str]:
    """``dataset.class_names`` if given, else VOC's names for VOC-layout data, else ``class_<i>``."""
    d = cfg.dataset
    if d.class_names:
        return list(d.class_names)
    n = d.num_classes
    known = VOC_CLASSES if d.get("family", "voc") == "voc" else ()
    return list(known[:n]) + [f"class_{i}" for i in range(len(known[:n]), n)]


def palette(cfg: DictConfig) -> np.ndarray:
    """(256, 3) uint8 class colours: ``dataset.palette``, else the ``color_map`` colours, else generated.

    VOC-layout data gets VOC's bit-interleaved ``VOClabelcolormap`` (class 0 black, as VOC
    draws its background); any other dataset Kelly's distinct colours, so class 0 (often a
    class like the others: CamVid's sky) is not black.
    """
    d = cfg.dataset
    table = voc_colormap() if d.get("family", "voc") == "voc" else distinct_colormap()
    given = d.get("palette")
    if given:
        table[: len(given)] = np.array(OmegaConf.to_container(given), dtype=np.uint8)
    elif d.get("color_map") is not None:
        for colour, cls in label_mapping(d).color_map.items():  # type: ignore[union-attr]
            if cls < d.num_classes:
                table[cls] = colour
    return table


def validate_dataset(cfg: DictConfig) -> None:
    """Dataset keys the schema cannot check: names and palette sizes, the label keys."""
    d = cfg.dataset
    if d.class_names and len(d.class_names) != d.num_classes:
        raise ConfigError(
            f"dataset.class_names lists {len(d.class_names)} names but dataset.num_classes={d.num_classes}; "
            "give one name per class."
        )
    if d.palette:
        bad = [c for c in d.palette if len(c) != 3 or not all(0 <= int(v) <= 255 for v in c)]
        if len(d.palette) < d.num_classes or bad:
            raise ConfigError(
                f"dataset.palette must list one [R, G, B] (0..255) per class ({d.num_classes}); it lists "
                f"{len(d.palette)} entries{' including ' + str(list(bad[0])) if bad else ''}. Set it, or null "
                "for generated colours."
            )
    label_mapping(d)
    check_folds(d)


def fit_size(dataset: DictConfig) -> tuple[int, int] | None:
    """``dataset.fit_size`` as (long side, short side), or None."""
    value = dataset.get("fit_size")
    return None if value is None else (int(value[0]), int(value[1]))


def make_train_loader(
    cfg: DictConfig, start_iter: int, skip_log: Path | None = None, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """Iteration-based loader: yields ``max_iters * accumulate`` micro-batches from ``start_iter``.

    With ``world_size`` processes each takes ``batch_size / world_size`` samples of
    every global batch (the same samples and augmentation seeds a single process uses).

    Under ``dataset.on_error=skip`` a bad sample is dropped from its batch (and logged
    to ``skip_log``); a batch of only bad samples comes out as None.
    """
    d, t = cfg.dataset, cfg.trainer
    crop = d.crop_size if d.get("crop_width") is None else (d.crop_size, d.crop_width)
    transforms = train_transforms(
        crop,
        tuple(d.scale_range),
        d.flip,
        *normalisation(cfg),
        scale_step=d.get("scale_step"),
        fit_size=fit_size(d),
        cat_max_ratio=d.get("cat_max_ratio", 1.0),
        photometric=d.get("photometric", False),
    )
    dataset = SegmentationDataset(
        layout_for(cfg, train_split(d)),
        train_split(d),
        label_mapping(d),
        transforms,
        on_error=d.on_error,
        skip_log=skip_log,
    )
    if len(dataset) < t.batch_size:
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} is larger than the training split {train_split(d)!r} "
            f"({len(dataset)} images, {dataset.source}); lower trainer.batch_size or use a larger split."
        )
    sampler = IterationBatchSampler(
        len(dataset),
        t.batch_size // world_size,
        t.max_iters * t.accumulate,
        start=start_iter * t.accumulate,
        seed=t.seed,
        rank=rank,
        world_size=world_size,
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=d.num_workers,
        collate_fn=collate_kept,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(t.seed),  # never draw from the global RNG (dropout's)
    )


def make_eval_dataset(
    cfg: DictConfig, split: str | None = None, require_masks: bool = True, skip_log: Path | None = None
) -> SegmentationDataset:
    """Whole images of ``split`` (default ``dataset.val_split``), the first ``dataset.subset`` of them."""
    d = cfg.dataset
    split = split or val_split(d)
    return SegmentationDataset(
        layout_for(cfg, split),
        split,
        label_mapping(d),
        eval_transforms(*normalisation(cfg)),
        subset=d.subset,
        require_masks=require_masks,
        on_error=d.on_error,
        skip_log=skip_log,
    )


CLASS_WEIGHTS_FILE = "class_weights.json"


def _weights_key(cfg: DictConfig, method: str) -> dict[str, object]:
    """What the counted weights depend on: a change (other masks, mapping, split) recounts them."""
    d = cfg.dataset
    keys = ("family", "root", "train_split", "image_dir", "mask_dir", "mask_suffix", "split_list", "num_classes",
            "label_map", "reduce_zero_label", "ignore_values", "color_map", "folds", "fold")  # fmt: skip
    return {"method": method, **{k: OmegaConf.to_container(d[k]) if OmegaConf.is_config(d[k]) else d[k] for k in keys}}


def class_weights(cfg: DictConfig, run_dir: Path, is_main: bool = True) -> list[float] | None:
    """``loss.class_weights`` as one weight per class; counted weights are cached in the run dir.

    The counts are taken once over the training masks after label mapping, by rank 0
    (the caller synchronises the ranks); a resumed run reads ``class_weights.json``.
    """
    value = cfg.loss.class_weights
    if value is None:
        return None
    n = cfg.dataset.num_classes
    if not isinstance(value, str):
        return check_explicit(list(value), n)
    if value not in WEIGHTINGS:
        raise ConfigError(
            f"loss.class_weights={value!r}; choose null, {', '.join(WEIGHTINGS)} or a list of {n} weights."
        )
    path = run_dir / CLASS_WEIGHTS_FILE
    key = _weights_key(cfg, value)
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return [float(w) for w in stored["weights"]]
    if not is_main:
        raise ConfigError(f"{path} is missing or stale; rank 0 writes it before the other ranks read it.")
    d = cfg.dataset
    stats = count_labels(layout_for(cfg, train_split(d)), train_split(d), label_mapping(d), progress=False)
    weights = weights_from_stats(stats, value)
    names = class_names(cfg)
    record = {
        "key": key,
        "weights": weights,
        "per_class": {
            name: {"weight": w, "pixels": int(p), "images": int(i)}
            for name, w, p, i in zip(names, weights, stats.pixels, stats.images, strict=False)
        },  # fmt: skip
        "masks": stats.masks,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    return weights


def loss_spec(cfg: DictConfig, weights: list[float] | None) -> LossSpec:
    loss = cfg.loss
    if not 0 < loss.ohem_thresh <= 1 or loss.ohem_min_kept < 0:
        raise ConfigError(
            f"loss.ohem_thresh={loss.ohem_thresh} must lie in (0, 1] and loss.ohem_min_kept={loss.ohem_min_kept} "
            "must be at least 0."
        )
    aux = cfg.model.get("aux_head")
    return LossSpec(
        tuple(weights) if weights is not None else None,
        loss.ohem,
        loss.ohem_thresh,
        loss.ohem_min_kept,
        aux_head_weight=float(aux.loss_weight) if aux is not None else 0.0,
    )


def dataset_node(cfg: DictConfig) -> DictConfig:
    """``cfg.dataset`` typed by the training schema: defaults filled in, wrong types reported."""
    node = OmegaConf.to_container(cfg.dataset)
    node.pop("split", None)  # check-data's own key (see requested_splits)
    try:
        return OmegaConf.merge(OmegaConf.structured(DatasetConfig), node)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = f"dataset.{exc.full_key}" if getattr(exc, "full_key", None) else "dataset"
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{key}: {message}. Fix the value on the command line or in configs/dataset/.") from None


def split_names(splits: Any, dataset: DictConfig) -> list[str]:
    """``splits`` as a list without repeats; null means the training and validation splits."""
    if splits is None:
        names = [train_split(dataset), val_split(dataset)]
    elif isinstance(splits, str):
        names = [splits]
    elif isinstance(splits, ListConfig | list | tuple) and all(isinstance(s, str) for s in splits):
        names = list(splits)
    else:
        raise ConfigError(f"splits={splits!r} must be a list of split names, e.g. splits=[train,val], or null.")
    if not names:
        raise ConfigError("splits=[] names no split; list some, e.g. splits=[train,val], or set splits=null.")
    return list(dict.fromkeys(names))


def requested_splits(cfg: DictConfig) -> Any:
    """``splits=`` or its alias ``dataset.split=``; naming both with different values is an error."""
    alias = cfg.dataset.get("split")
    if alias is None:
        return cfg.splits
    if cfg.splits is not None and split_names(cfg.splits, cfg.dataset) != split_names(alias, cfg.dataset):
        raise ConfigError(
            f"splits={cfg.splits} and dataset.split={alias} disagree; give one of them, e.g. splits=[train,val]."
        )
    return alias


def worker_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"workers={value!r} must be a positive number of decoding threads, e.g. workers=8.")
    return value
