"""``deeplab-predict``: palette PNG masks and overlay JPEGs for any images, with optional TTA and CRF."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from PIL import Image

from .._paths import config_dir
from ..config import datasets, evaluation, runtime
from ..config.checkpoints import load_for_eval
from ..data.images import ImageFiles, Inputs, resolve_inputs, unreadable
from ..data.results import save_prediction_file
from ..data.transforms import eval_transforms
from ..deploy.predict_exported import EXPORTED_SUFFIXES, check_plain, predict_exported
from ..engine.eval.pipeline import run_evaluation
from ..engine.report.legend import with_legend
from ..engine.report.logger import colorize
from ..engine.runtime.outputs import OutputFolder, check_output_folder
from ..engine.runtime.precision import to_memory_format
from ..errors import ConfigError
from . import _hydra

log = logging.getLogger(__name__)

#: Each class's index, name and colour, beside the predicted masks.
PALETTE_FILE = "palette.json"
#: Input files that could not be read (``on_error=skip``), in the run directory.
SKIPPED_FILE = "skipped_inputs.txt"


def overlay(
    image: np.ndarray, pred: np.ndarray, alpha: float, palette: np.ndarray | None = None, keep_background: bool = True
) -> np.ndarray:
    """The image with class colours blended in at ``alpha``; with ``keep_background`` class 0
    ("background", as in VOC) is left as it is, else every class is coloured (road scenes)."""
    colours = colorize(pred, palette).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    if not keep_background:
        return blended.round().astype(np.uint8)
    return np.where((pred > 0)[..., None], blended, image).round().astype(np.uint8)


class _Outputs:
    """The mask PNG and legend-carrying overlay JPEG of each image, written through an :class:`OutputFolder`
    (shared by the checkpoint and exported-file paths)."""

    def __init__(self, folder: OutputFolder, alpha: float) -> None:
        self.folder, self.alpha = folder, alpha

    @staticmethod
    def names(ids: list[str]) -> list[str]:
        return [name for i in ids for name in (f"{i}.png", f"{i}_overlay.jpg")] + [PALETTE_FILE]

    def __call__(
        self, dataset: ImageFiles, index: int, pred: torch.Tensor, palette: np.ndarray, names: list[str]
    ) -> None:
        labels = pred.cpu().numpy().astype(np.uint8)
        image_id = dataset.ids[index]
        self.folder.write(f"{image_id}.png", lambda tmp: save_prediction_file(tmp, pred, palette))
        background = bool(names) and names[0].lower() == "background"
        mixed = overlay(dataset.load_rgb(index), labels, self.alpha, palette, background)
        shown = [int(c) for c in np.unique(labels) if c < len(names)]
        picture = with_legend(mixed, shown, names, palette)
        self.folder.write(f"{image_id}_overlay.jpg", lambda tmp: Image.fromarray(picture).save(tmp, quality=90))

    def palette_file(self, palette: np.ndarray, names: list[str]) -> None:
        """``palette.json`` beside the masks: each class's index, name and colour (the PNGs' palette)."""
        rows = [{"index": i, "name": n, "rgb": [int(v) for v in palette[i]]} for i, n in enumerate(names)]
        self.folder.write(PALETTE_FILE, lambda tmp: tmp.write_text(json.dumps({"classes": rows}, indent=2) + "\n"))


def _inputs(cfg: DictConfig, run_dir: Path) -> Inputs:
    """``input=`` resolved; unreadable files stop the command before any output, or are skipped (listed)."""
    if cfg.on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error={cfg.on_error!r}; choose raise (stop at an unreadable image) or skip.")
    found = resolve_inputs(str(cfg.input), bool(cfg.recursive))
    if found.unsearched:
        log.info("%d sub-folder(s) of %s not searched (%s); recursive=true searches them", len(found.unsearched),
                 cfg.input, ", ".join(p.name for p in found.unsearched[:3]))  # fmt: skip
    bad = unreadable(found.files)
    if not bad:
        return found
    first, reason = next(iter(bad.items()))
    if cfg.on_error != "skip":
        raise ConfigError(
            f"{len(bad)} of the {len(found.files)} input files cannot be read as images, e.g. {first} ({reason}). "
            "Nothing was written. Remove or fix them, or pass on_error=skip to predict the others (the skipped "
            f"files are then listed in the run directory, {SKIPPED_FILE})."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SKIPPED_FILE).write_text("".join(f"{path}\t{why}\n" for path, why in bad.items()))
    log.warning("skipped %d unreadable file(s) (on_error=skip), listed in %s", len(bad), run_dir / SKIPPED_FILE)
    kept = [i for i, f in enumerate(found.files) if f not in bad]
    if not kept:
        raise ConfigError(f"none of the {len(found.files)} input files can be read as images, e.g. {first} ({reason}).")
    return replace(found, files=[found.files[i] for i in kept], ids=[found.ids[i] for i in kept])


def _output_folder(cfg: DictConfig, run_dir: Path, found: Inputs, dataset_roots: list[str]) -> OutputFolder:
    """``output=`` (default ``<run dir>/predictions``): outside the inputs and any dataset, replacing only our files."""
    out_dir = Path(cfg.output).expanduser() if cfg.output else run_dir / "predictions"
    protected = [(Path(r).expanduser(), "the dataset root (dataset.root)") for r in dataset_roots if r]
    if cfg.output:  # the default, in the run dir, is this run's own wherever the run dir is
        check_output_folder(out_dir, "output", found.folders, [(p, w) for p, w in protected if p.is_dir()],
                            cfg.overwrite, inside=found.whole_folder)  # fmt: skip
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output={str(out_dir)!r} cannot be created ({exc}); choose a writable folder.") from exc
    # the default folder is inside this command's own run dir: nothing there is the user's
    folder = OutputFolder(out_dir, "output", bool(cfg.overwrite) or not cfg.output)
    folder.claim(_Outputs.names(found.ids))
    return folder


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    """Segment every input image; returns where the files went and how many."""
    if not 0.0 <= cfg.overlay_alpha <= 1.0:
        raise ConfigError(f"overlay_alpha={cfg.overlay_alpha} must lie in [0, 1].")
    settings = evaluation.eval_settings(cfg.eval, cfg.crf, cfg.model.num_classes, has_targets=False)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    found = _inputs(cfg, run_dir)
    exported = Path(str(cfg.checkpoint)).expanduser()
    if exported.suffix in EXPORTED_SUFFIXES:
        check_plain(list(cfg.eval.scales), bool(cfg.eval.flip), settings.crf is not None)
        folder = _output_folder(cfg, run_dir, found, [cfg.dataset.root])
        outputs = _Outputs(folder, cfg.overlay_alpha)
        start = time.perf_counter()
        count = predict_exported(exported, ImageFiles(found.files, None, found.ids), outputs)
        seconds = time.perf_counter() - start
        print(f"{count} images -> {folder.folder} ({exported.name})")
        return {"output": str(folder.folder), "num_images": count, "seconds": seconds}
    model, train_cfg = load_for_eval(cfg, list(HydraConfig.get().overrides.task))
    folder = _output_folder(cfg, run_dir, found, [cfg.dataset.root, train_cfg.dataset.root])
    device = runtime.select_device(train_cfg.trainer.device)
    t = train_cfg.trainer
    model = to_memory_format(model.to(device), t.channels_last)
    settings = replace(
        settings,
        num_classes=train_cfg.model.num_classes,
        precision=t.precision,
        channels_last=t.channels_last,
        fit=evaluation.fit_for(train_cfg.dataset, settings.batch_size),
    )
    dataset = ImageFiles(found.files, eval_transforms(*datasets.normalisation(train_cfg)), found.ids)
    final_stage = "crf" if settings.crf is not None else "network"
    palette, names = datasets.palette(train_cfg), datasets.class_names(train_cfg)
    outputs = _Outputs(folder, cfg.overlay_alpha)
    outputs.palette_file(palette, names)

    def hook(index: int, pred: torch.Tensor, target: torch.Tensor, stage: str) -> None:
        if stage == final_stage:
            outputs(dataset, index, pred, palette, names)

    result = run_evaluation(model, dataset, device, settings, on_prediction=hook)
    log.info("wrote %d masks and overlays to %s in %.1f s", len(dataset), folder.folder, result.seconds)
    print(f"{len(dataset)} images -> {folder.folder}")
    return {"output": str(folder.folder), "num_images": len(dataset), "seconds": result.seconds}


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    with _hydra.user_errors():
        run_predict(cfg)


def main() -> None:
    """``deeplab-predict``."""
    _hydra.run(hydra_main)


if __name__ == "__main__":
    main()
