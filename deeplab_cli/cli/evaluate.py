"""``deeplab-eval``: evaluate a checkpoint on whole images at their original size (+ TTA, CRF, trimap)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .._paths import config_dir
from ..config import datasets, evaluation, preflight, runtime
from ..config.checkpoints import load_with_provenance
from ..data import results
from ..data.palette import voc_colormap
from ..data.segmentation import skipped_samples
from ..engine.eval.pipeline import EvalResult, EvalSettings, PredictionHook, run_evaluation
from ..engine.eval.prob_cache import ProbabilityCache, file_digest
from ..engine.report.logger import TensorBoardLogger, format_table
from ..engine.report.pictures import save_pictures
from ..engine.runtime import distributed
from ..engine.runtime.precision import to_memory_format
from . import _hydra

log = logging.getLogger(__name__)

#: One JSON line per skipped sample (``dataset.on_error=skip``), in the run dir.
SKIP_LOG = "skipped_samples.jsonl"

#: The nodes that decide the network's output (part of the probability cache key).
_ARCH_NODES = ("model", "backbone", "head", "scales")


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
            **({"fit": list(settings.fit)} if settings.fit is not None else {}),
        },
    }
    return ProbabilityCache(cfg.eval.cache_dir, key)


def _output_hook(cfg: DictConfig, train_cfg: DictConfig, run_dir: Path, dataset, final_stage: str) -> PredictionHook:
    """Writes the final prediction (CRF's when it runs) where asked: palette PNGs under ``predictions/``,
    and the export format's files (``voc_test``: VOC palette PNGs; ``labels``: the dataset's stored values)."""
    pred_dir = run_dir / "predictions" if cfg.save_predictions else None
    export = cfg.eval.export
    voc_dir = results.voc_results_dir(run_dir) if export == "voc_test" else None
    labels_dir = results.labels_results_dir(run_dir) if export == "labels" else None
    inverse = datasets.label_mapping(train_cfg.dataset).inverse() if labels_dir is not None else None
    colours = datasets.palette(train_cfg)
    if pred_dir is not None:
        pred_dir.mkdir(parents=True, exist_ok=True)

    def hook(index: int, pred: torch.Tensor, target: torch.Tensor, stage: str) -> None:
        if stage != final_stage:
            return
        stem = dataset.ids[index]
        if pred_dir is not None:
            results.save_prediction(pred_dir, stem, pred, colours)
        if voc_dir is not None:
            results.save_prediction(voc_dir, stem, pred, voc_colormap())
        if labels_dir is not None and inverse is not None:
            results.save_raw_labels(labels_dir, stem, train_cfg.dataset.mask_suffix, pred, inverse)

    return hook


def assemble_metrics(result: EvalResult, train_cfg: DictConfig, cfg: DictConfig, s: EvalSettings, n: int) -> dict:
    """``metrics.json``: the final (CRF if run) metrics on top, the network's alongside."""
    net = evaluation.split_metrics(result.network.matrix, train_cfg, n)
    metrics: dict[str, Any] = net
    if result.crf is not None and s.crf is not None:
        final = evaluation.split_metrics(result.crf.matrix, train_cfg, n)
        crf = {"name": cfg.crf.name, **s.crf.as_dict(), "workers": s.crf_workers}
        metrics = {**final, "mIoU_network": net["mIoU"], "mIoU_crf": final["mIoU"], "crf": crf, "network": net}
    names = datasets.class_names(train_cfg)
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
    settings = evaluation.eval_settings(cfg.eval, cfg.crf, cfg.model.num_classes)  # fails before any loading
    if info.enabled and cfg.crf.workers is None:  # the ranks on one machine share its cores
        settings = replace(settings, crf_workers=max(1, settings.crf_workers // info.local_world_size))
    model, train_cfg, provenance = load_with_provenance(cfg, list(HydraConfig.get().overrides.task))
    device = distributed.device_for(runtime.select_device(train_cfg.trainer.device), info)
    export = cfg.eval.export
    split = cfg.eval.split or (train_cfg.dataset.test_split if export else None)
    dataset = datasets.make_eval_dataset(train_cfg, split, require_masks=export is None, skip_log=run_dir / SKIP_LOG)
    preflight.check_eval_holdout(
        str(cfg.checkpoint),
        dataset.layout,
        dataset.split,
        dataset.layout.listing(dataset.split).stems,
        bool(train_cfg.dataset.allow_overlap),
    )
    has_targets = export is None or dataset.has_masks()
    t = train_cfg.trainer
    settings = replace(
        settings,
        num_classes=train_cfg.model.num_classes,
        trimap=settings.trimap if has_targets else (),
        precision=t.precision,
        channels_last=t.channels_last,
        shard=(info.rank, info.world_size),
        fit=evaluation.fit_for(train_cfg.dataset, settings.batch_size),
    )  # fmt: skip  (no ground truth, no boundaries: no trimap)
    model = to_memory_format(model.to(device), t.channels_last)
    cache = make_cache(cfg, train_cfg, dataset, settings)
    hook = _output_hook(cfg, train_cfg, run_dir, dataset, "crf" if settings.crf is not None else "network")
    result = run_evaluation(model, dataset, device, settings, cache, hook)
    result.all_reduce()
    distributed.barrier()  # every rank's prediction PNGs and skipped-sample lines are on disk
    metrics = assemble_metrics(result, train_cfg, cfg, settings, result.images) if has_targets else {}
    metrics.update(_run_facts(cfg, train_cfg, dataset.split, result, settings, cache))
    metrics["init_weights"] = provenance.as_dict()
    if info.enabled:
        metrics["world_size"] = info.world_size
    if info.is_main:
        _write(metrics, cfg, train_cfg, run_dir, result, has_targets)
        print(f"checkpoint {cfg.checkpoint}; initial weights: {provenance.describe()}")
        if has_targets:
            print(format_table(metrics))
    return metrics


def _run_facts(
    cfg: DictConfig, train_cfg: DictConfig, split: str, result: EvalResult, s: EvalSettings, cache
) -> dict[str, Any]:
    """What was evaluated and how: the checkpoint, split, test-time settings, where probabilities came from."""
    window = {"window": list(s.slide.window), "stride": list(s.slide.stride)} if s.slide else {}
    return {
        "checkpoint": str(cfg.checkpoint),
        "split": split,
        "num_images": result.images,
        "test_time": {
            "scales": list(s.scales),
            "flip": s.flip,
            "mode": cfg.eval.mode,
            **window,
            "output_stride": train_cfg.model.output_stride,
        },  # fmt: skip
        "probabilities": {
            "network_images": result.network_images,
            "cached_images": result.cached_images,
            "cache": str(cache.dir) if cache is not None else None,
        },
        "seconds": round(result.seconds, 3),
    }


def _write(
    metrics: dict[str, Any], cfg: DictConfig, train_cfg: DictConfig, run_dir: Path, result: EvalResult, targets: bool
) -> None:
    """Rank 0: skipped samples, the results-server archive, the pictures and ``metrics.json``."""
    skipped = skipped_samples(run_dir / SKIP_LOG)
    if skipped is not None:
        metrics["skipped_samples"] = skipped
        log.warning("%d bad samples were skipped: %s", skipped["count"], "; ".join(skipped["errors"]))
    if cfg.eval.export:
        metrics["export"] = {"format": cfg.eval.export, "archive": str(results.archive_results(run_dir))}
        log.info("results server files: %s (upload %s)", run_dir / "results", metrics["export"]["archive"])
    if targets and cfg.eval.plots:
        _pictures(run_dir, result, train_cfg, metrics)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


def _pictures(run_dir: Path, result: EvalResult, train_cfg: DictConfig, metrics: dict[str, Any]) -> None:
    names = datasets.class_names(train_cfg)
    trimap, plain = {}, {}
    if "trimap_miou_network" in metrics:
        trimap["network"] = {int(w): v for w, v in metrics["trimap_miou_network"].items()}
        plain["network"] = metrics["mIoU_network"]
    if "trimap_miou" in metrics:
        label = "CRF" if result.crf is not None else "network"
        trimap[label] = {int(w): v for w, v in metrics["trimap_miou"].items()}
        plain[label] = metrics["mIoU"]
    matrix = result.crf.matrix if result.crf is not None else result.network.matrix
    tb = TensorBoardLogger(run_dir / "tensorboard", palette=datasets.palette(train_cfg))
    try:
        save_pictures(run_dir / "plots", tb, 0, matrix, names, metrics, trimap or None, plain or None)
    finally:
        tb.close()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def hydra_main(cfg: DictConfig) -> float:
    with distributed.session() as info, _hydra.user_errors(distributed.rank_prefix(info)):
        return float(run_eval(cfg).get("mIoU", float("nan")))


def main() -> None:
    """``deeplab-eval`` (also under ``torchrun``)."""
    distributed.launch(partial(_hydra.run, hydra_main))


if __name__ == "__main__":
    main()
