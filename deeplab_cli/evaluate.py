"""``deeplab-eval``: evaluate a checkpoint on whole images at their original size (+ TTA, CRF, trimap)."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image

from . import entry, factory
from ._paths import config_dir
from .config import TrainConfig, migrate_stored_config, register_configs
from .data import label_export, voc_export
from .data.palette import voc_colormap
from .data.segmentation import skipped_samples
from .engine import distributed
from .engine.checkpoint import CheckpointError, load_checkpoint, load_weights
from .engine.logger import TensorBoardLogger, format_table
from .engine.pipeline import EvalResult, EvalSettings, PredictionHook, run_evaluation
from .engine.precision import to_memory_format
from .engine.prob_cache import ProbabilityCache, file_digest
from .errors import DeepLabError
from .models.importers import is_ours
from .models.weights.provenance import Provenance, checkpoint_provenance, imported_provenance
from .report import save_pictures

log = logging.getLogger("deeplab_cli.evaluate")
register_configs()

#: One JSON line per skipped sample (``dataset.on_error=skip``), in the run dir.
SKIP_LOG = "skipped_samples.jsonl"

#: The nodes that decide the network's output (part of the probability cache key).
_ARCH_NODES = ("model", "backbone", "head", "scales")

#: Selecting one of these groups on the command line replaces these stored nodes.
_GROUP_NODES = {
    "model": ("model", "backbone", "head", "scales"),
    "backbone": ("backbone",),
    "head": ("head",),
    "scales": ("scales",),
    "dataset": ("dataset",),
    "trainer": ("trainer",),
}

#: The one way to change the checkpoint's input normalisation: naming these keys.
_PREPROCESS_KEY = "model.preprocess"


def merge_overrides(stored: dict[str, Any], cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The checkpoint's training config with the user's command-line overrides on top.

    Only keys the user named are taken from the eval-time composition, so a
    checkpoint trained on VOC with a ResNet is evaluated as such unless asked. The
    input normalisation (``model.preprocess``) belongs to the weights: it stays the
    checkpoint's under every group override (``dataset=``, ``model=``) and changes only
    when ``model.preprocess.*`` is named, which is logged.
    """
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), migrate_stored_config(stored))
    weights_preprocess = merged.model.preprocess.copy()
    explicit = False
    parsed = OverridesParser.create().parse_overrides(overrides)
    # groups before keys, as Hydra composes them: `model.preprocess.mean=... model=X` keeps the mean
    parsed.sort(key=lambda o: "." in o.key_or_group)
    for override in parsed:
        key = override.key_or_group
        top = key.split(".")[0].split("/")[0]
        if top not in _GROUP_NODES:
            continue
        if "." not in key:
            for node in _GROUP_NODES[top]:
                merged[node] = cfg[node]
            merged.model.preprocess = weights_preprocess
        else:
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
            explicit |= key.startswith(_PREPROCESS_KEY)
    if not explicit:
        merged.model.preprocess = weights_preprocess
    elif merged.model.preprocess != weights_preprocess:
        log.warning(
            "model.preprocess=%s differs from the checkpoint's %s (what its weights were trained with); "
            "the given values are used",
            OmegaConf.to_container(merged.model.preprocess),
            OmegaConf.to_container(weights_preprocess),
        )
    return merged


def save_prediction(out_dir: Path, image_id: str, pred: torch.Tensor, palette: np.ndarray) -> None:
    """A palette PNG of the image's size (``image_id`` may hold sub-folders, as Cityscapes' ``city/name``)."""
    img = Image.fromarray(pred.to(torch.uint8).cpu().numpy(), mode="P")
    img.putpalette(palette.reshape(-1).tolist())
    path = out_dir / f"{image_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _user_output_stride(overrides: list[str]) -> int | None:
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group == "model.output_stride":
            return int(override.value())
    return None


def load_for_eval(cfg: DictConfig, overrides: list[str]) -> tuple[torch.nn.Module, DictConfig]:
    """Our checkpoint (rebuilt from its stored config) or another project's, recognised by its keys.

    Foreign checkpoints bring their architecture and their test-time preprocessing
    (e.g. BGR mean subtraction); the user's overrides still apply on top.
    """
    model, train_cfg, _ = load_with_provenance(cfg, overrides)
    return model, train_cfg


def load_with_provenance(cfg: DictConfig, overrides: list[str]) -> tuple[torch.nn.Module, DictConfig, Provenance]:
    """:func:`load_for_eval` and where the checkpoint's initial weights came from (logged)."""
    state = load_checkpoint(cfg.checkpoint)
    if is_ours(state):
        provenance = checkpoint_provenance(state)
        log.info("initial weights of %s: %s", cfg.checkpoint, provenance.describe())
        train_cfg = merge_overrides(state["config"], cfg, overrides)
        factory.validate(train_cfg)
        factory.resolve_preprocess(train_cfg)
        model = factory.make_model(train_cfg, pretrained=False)
        load_weights(model, state["model"], str(cfg.checkpoint))
        return model, train_cfg, provenance
    try:
        imported = factory.import_any_checkpoint(state, output_stride=_user_output_stride(overrides))
    except CheckpointError as exc:
        raise CheckpointError(f"{cfg.checkpoint}: {exc}") from exc
    stored = OmegaConf.to_container(cfg, resolve=True)
    for node in set(stored) - {f.name for f in fields(TrainConfig)}:  # eval/predict-only nodes
        stored.pop(node)
    stored.update(imported.config_overrides)  # with the weights' model.preprocess
    for note in imported.notes:
        log.info("%s: %s", imported.layout, note)
    train_cfg = merge_overrides(stored, cfg, overrides)
    factory.validate(train_cfg)
    factory.resolve_preprocess(train_cfg)
    log.info("imported a %s checkpoint (%d classes)", imported.layout, train_cfg.model.num_classes)
    return imported.model, train_cfg, imported_provenance(Path(cfg.checkpoint), imported.layout)


def make_cache(cfg: DictConfig, train_cfg: DictConfig, dataset, settings: EvalSettings) -> ProbabilityCache | None:
    """The probability cache for this checkpoint, architecture, preprocessing and test-time settings.

    ``eval.cache=auto`` keeps probabilities only when a CRF runs (a CRF sweep is then
    one network pass); entries are per image, so a ``dataset.subset`` run fills
    part of what a full run reuses.
    """
    mode = str(cfg.eval.cache).lower()
    if mode == "false" or (mode == "auto" and settings.crf is None):
        return None
    key = {
        "checkpoint": file_digest(cfg.checkpoint),
        "architecture": {n: OmegaConf.to_container(train_cfg[n], resolve=True) for n in _ARCH_NODES},
        "preprocess": OmegaConf.to_container(train_cfg.model.preprocess),
        "images": str(dataset.image_dir.resolve()),
        "test_time": {
            "scales": list(settings.scales),
            "flip": settings.flip,
            "batch_size": settings.batch_size,
            **({"slide": asdict(settings.slide)} if settings.slide is not None else {}),
        },
    }
    return ProbabilityCache(cfg.eval.cache_dir, key)


def _output_hook(cfg: DictConfig, train_cfg: DictConfig, run_dir: Path, dataset, final_stage: str) -> PredictionHook:
    """Writes the final prediction (CRF's when it runs) where asked: palette PNGs under ``predictions/``,
    and the export format's files (``voc_test``: VOC palette PNGs; ``labels``: the dataset's stored values)."""
    pred_dir = run_dir / "predictions" if cfg.save_predictions else None
    export = cfg.eval.export
    voc_dir = voc_export.results_dir(run_dir) if export == "voc_test" else None
    labels_dir = label_export.results_dir(run_dir) if export == "labels" else None
    inverse = factory.label_mapping(train_cfg.dataset).inverse() if labels_dir is not None else None
    colours = factory.palette(train_cfg)
    if pred_dir is not None:
        pred_dir.mkdir(parents=True, exist_ok=True)

    def hook(index: int, pred: torch.Tensor, target: torch.Tensor, stage: str) -> None:
        if stage != final_stage:
            return
        stem = dataset.ids[index]
        if pred_dir is not None:
            save_prediction(pred_dir, stem, pred, colours)
        if voc_dir is not None:
            save_prediction(voc_dir, stem, pred, voc_colormap())
        if labels_dir is not None and inverse is not None:
            label_export.save_raw_labels(labels_dir, stem, train_cfg.dataset.mask_suffix, pred, inverse)

    return hook


def assemble_metrics(result: EvalResult, train_cfg: DictConfig, cfg: DictConfig, s: EvalSettings, n: int) -> dict:
    """``metrics.json``: the final (CRF if run) metrics on top, the network's alongside."""
    net = factory.split_metrics(result.network.matrix, train_cfg, n)
    metrics: dict[str, Any] = net
    if result.crf is not None and s.crf is not None:
        final = factory.split_metrics(result.crf.matrix, train_cfg, n)
        crf = {"name": cfg.crf.name, **s.crf.as_dict(), "workers": s.crf_workers}
        metrics = {**final, "mIoU_network": net["mIoU"], "mIoU_crf": final["mIoU"], "crf": crf, "network": net}
    names = factory.class_names(train_cfg)
    meters = [("trimap_miou", result.trimap_crf or result.trimap_network)]
    if result.trimap_crf is not None:
        meters.append(("trimap_miou_network", result.trimap_network))
    for key, meter in meters:
        if meter is not None:
            metrics[key] = {str(w): v for w, v in meter.result(names).items()}
    return metrics


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild the model from the checkpoint, evaluate (TTA, CRF, trimap), write ``metrics.json``.

    Under ``torchrun`` each rank evaluates every N-th image (and writes its predictions);
    the counts are summed and rank 0 writes the metrics, pictures and export archive.
    """
    info = distributed.current()
    if not info.is_main:
        logging.getLogger("deeplab_cli").setLevel(logging.WARNING)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    settings = factory.eval_settings(cfg.eval, cfg.crf, cfg.model.num_classes)  # fails before any loading
    if info.enabled and cfg.crf.workers is None:  # the ranks on one machine share its cores
        settings = replace(settings, crf_workers=max(1, settings.crf_workers // info.local_world_size))
    model, train_cfg, provenance = load_with_provenance(cfg, list(HydraConfig.get().overrides.task))
    device = distributed.device_for(factory.select_device(train_cfg.trainer.device), info)
    model.to(device)
    export = cfg.eval.export
    split = cfg.eval.split or (train_cfg.dataset.test_split if export else None)
    dataset = factory.make_eval_dataset(train_cfg, split, require_masks=export is None, skip_log=run_dir / SKIP_LOG)
    has_targets = export is None or dataset.has_masks()
    trimap = settings.trimap if has_targets else ()  # no ground truth, no boundaries
    t = train_cfg.trainer
    settings = replace(
        settings, num_classes=train_cfg.model.num_classes, trimap=trimap, precision=t.precision,
        channels_last=t.channels_last, shard=(info.rank, info.world_size),
    )  # fmt: skip
    model = to_memory_format(model, t.channels_last)
    cache = make_cache(cfg, train_cfg, dataset, settings)
    hook = _output_hook(cfg, train_cfg, run_dir, dataset, "crf" if settings.crf is not None else "network")
    result = run_evaluation(model, dataset, device, settings, cache, hook)
    result.all_reduce()
    distributed.barrier()  # every rank's prediction PNGs and skipped-sample lines are on disk
    metrics = assemble_metrics(result, train_cfg, cfg, settings, result.images) if has_targets else {}
    metrics.update(
        checkpoint=str(cfg.checkpoint),
        split=dataset.split,
        num_images=result.images,
        test_time={
            "scales": list(settings.scales),
            "flip": settings.flip,
            "mode": cfg.eval.mode,
            **(
                {"window": list(settings.slide.window), "stride": list(settings.slide.stride)} if settings.slide else {}
            ),
            "output_stride": train_cfg.model.output_stride,
        },
        probabilities={
            "network_images": result.network_images,
            "cached_images": result.cached_images,
            "cache": str(cache.dir) if cache is not None else None,
        },
        seconds=round(result.seconds, 3),
        init_weights=provenance.as_dict(),
    )
    if info.enabled:
        metrics["world_size"] = info.world_size
    if not info.is_main:
        return metrics
    skipped = skipped_samples(run_dir / SKIP_LOG)
    if skipped is not None:
        metrics["skipped_samples"] = skipped
        log.warning("%d bad samples were skipped: %s", skipped["count"], "; ".join(skipped["errors"]))
    if export:
        metrics["export"] = {"format": export, "archive": str(voc_export.archive_results(run_dir))}
        log.info("results server files: %s (upload %s)", run_dir / "results", metrics["export"]["archive"])
    if has_targets and cfg.eval.plots:
        _pictures(run_dir, result, train_cfg, metrics)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"checkpoint {cfg.checkpoint}; initial weights: {provenance.describe()}")
    if has_targets:
        print(format_table(metrics))
    return metrics


def _pictures(run_dir: Path, result: EvalResult, train_cfg: DictConfig, metrics: dict[str, Any]) -> None:
    names = factory.class_names(train_cfg)
    trimap, plain = {}, {}
    if "trimap_miou_network" in metrics:
        trimap["network"] = {int(w): v for w, v in metrics["trimap_miou_network"].items()}
        plain["network"] = metrics["mIoU_network"]
    if "trimap_miou" in metrics:
        label = "CRF" if result.crf is not None else "network"
        trimap[label] = {int(w): v for w, v in metrics["trimap_miou"].items()}
        plain[label] = metrics["mIoU"]
    matrix = result.crf.matrix if result.crf is not None else result.network.matrix
    tb = TensorBoardLogger(run_dir / "tensorboard", palette=factory.palette(train_cfg))
    try:
        save_pictures(run_dir / "plots", tb, 0, matrix, names, metrics, trimap or None, plain or None)
    finally:
        tb.close()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def hydra_main(cfg: DictConfig) -> float:
    with distributed.session() as info:
        try:
            return float(run_eval(cfg).get("mIoU", float("nan")))
        except (DeepLabError, OmegaConfBaseException) as exc:
            print(f"{distributed.rank_prefix(info)}Error: {entry.message_of(exc)}", file=sys.stderr)
            raise SystemExit(1) from None


def main() -> None:
    """``deeplab-eval`` (also under ``torchrun``)."""
    distributed.launch(partial(entry.run, hydra_main))


if __name__ == "__main__":
    main()
