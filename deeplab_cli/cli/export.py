"""``deeplab-export``: a checkpoint as one ONNX or torch.export file, verified before it is kept.

The checkpoint is rebuilt as ``deeplab-eval`` rebuilds it (ours from its stored config,
torchvision / kazuto1011 / VainF files by their keys), wrapped with its preprocessing and
the upsampling to the input size (:class:`~.deploy.wrapper.DeployModel`), exported with
dynamic batch, height and width, and run against PyTorch on images of several sizes;
an export outside the tolerance is deleted and the command fails.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .._paths import config_dir
from ..config import datasets
from ..config.checkpoints import load_with_provenance
from ..data.images import resolve_inputs
from ..deploy.exporters import (
    FORMATS,
    OPSETS,
    SUFFIX,
    ExportError,
    export_onnx,
    export_program,
    onnx_runner,
    program_runner,
    require_onnx,
)
from ..deploy.verify import compare, file_images, generated_images, summary, tolerance
from ..deploy.wrapper import OUTPUTS, DeployModel
from ..engine.runtime.outputs import OutputFolder
from ..models.weights.verify import sha256_file
from . import _hydra

log = logging.getLogger(__name__)


def check_options(cfg: DictConfig) -> None:
    if cfg.format not in FORMATS:
        raise ExportError(f"format={cfg.format!r}; choose one of {', '.join(FORMATS)}.")
    if cfg.format == "onnx" and cfg.opset not in OPSETS:
        raise ExportError(
            f"opset={cfg.opset} is not supported: torch's ONNX exporter writes opset {OPSETS[0]} or newer and "
            f"ONNX Runtime runs up to {OPSETS[-1]}; choose opset={OPSETS[0]}..{OPSETS[-1]}."
        )
    if cfg.output not in OUTPUTS:
        raise ExportError(f"output={cfg.output!r}; choose one of {', '.join(OUTPUTS)}.")
    if cfg.format == "onnx":
        require_onnx()
    if not cfg.verify.sizes or any(len(s) != 2 or min(s) < 16 for s in cfg.verify.sizes):
        raise ExportError(f"verify.sizes={list(cfg.verify.sizes)} must list [height, width] pairs of 16 or more.")


def metadata(cfg: DictConfig, train_cfg: DictConfig, mean: list[float], std: list[float], bgr: bool) -> dict:
    """What a deployment needs besides the graph: classes, colours, preprocessing, the source."""
    n = train_cfg.model.num_classes
    names = datasets.class_names(train_cfg)
    return {
        "format_version": 1,
        "classes": (names + [f"class_{i}" for i in range(len(names), n)])[:n],
        "palette": datasets.palette(train_cfg)[:n].tolist(),
        "preprocess": {"mean": mean, "std": std, "bgr": bgr, "in_graph": bool(cfg.include_preprocess)},
        "input": "uint8 RGB (N, 3, H, W), 0..255" if cfg.include_preprocess else "float32 normalised (N, 3, H, W)",
        "output": cfg.output,
        "model": train_cfg.model.get("name"),
        "output_stride": train_cfg.model.output_stride,
        "source_checkpoint": str(cfg.checkpoint),
        "source_sha256": sha256_file(Path(cfg.checkpoint)),
        "torch": torch.__version__,
    }


def out_path(cfg: DictConfig, run_dir: Path) -> Path:
    path = Path(cfg.out).expanduser() if cfg.out else run_dir / f"model{SUFFIX[cfg.format]}"
    if path.suffix != SUFFIX[cfg.format]:
        raise ExportError(f"out={str(path)!r} must end in {SUFFIX[cfg.format]} for format={cfg.format}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write(cfg: DictConfig, train_cfg: DictConfig, deploy: DeployModel, path: Path, meta: dict) -> None:
    """Export, turning exporter failures into one line (with the multi-scale hint where it applies)."""
    h, w = cfg.verify.sizes[0]
    # batch 2: torch.export specialises a dimension whose example size is 0 or 1
    example = torch.zeros(2 if cfg.dynamic else 1, 3, h, w, dtype=torch.uint8)
    if not cfg.include_preprocess:
        example = deploy.preprocess(example)
    try:
        if cfg.format == "onnx":
            export_onnx(deploy, example, path, cfg.opset, cfg.dynamic, meta)
        else:
            export_program(deploy, example, path, cfg.dynamic, meta)
    except Exception as exc:  # noqa: BLE001 - exporter errors are many kinds; one line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if train_cfg.scales.mode != "single":
            mode = train_cfg.scales.mode
            hint = f" The model runs scales.mode={mode}; export the single-scale network with scales=single."
        reason = f"{type(exc).__name__}: {first}"
        raise ExportError(f"{cfg.format} export of {cfg.checkpoint} failed: {reason}.{hint}") from None


def verify(cfg: DictConfig, deploy: DeployModel, path: Path) -> dict[str, Any]:
    """Compare the file with PyTorch; delete it and fail when it is outside the tolerance."""
    runner = onnx_runner(path) if cfg.format == "onnx" else program_runner(path)
    if cfg.verify.input:
        images = file_images(resolve_inputs(cfg.verify.input).files)
    else:
        images = generated_images(cfg.verify.sizes)
    if not cfg.dynamic:
        size = tuple(cfg.verify.sizes[0])
        images = [(n, im) for n, im in images if im.shape[:2] == size] or generated_images([size])
    results = compare(deploy, runner, images, batch_of_two=cfg.dynamic)
    worst, scale, agreement = summary(results)
    allowed = tolerance(cfg.verify.atol, cfg.verify.rtol, scale)
    report = {
        "images": [{**r.__dict__, "size": list(r.size)} for r in results],
        "max_abs_diff": worst,
        "max_abs_output": scale,
        "agreement": agreement,
        "atol": cfg.verify.atol,
        "rtol": cfg.verify.rtol,
        "allowed_diff": allowed,
        "min_agreement": cfg.verify.min_agreement,
    }
    for r in results:
        log.info("%s %dx%d: max |diff| %.3g, label agreement %.6f", r.name, *r.size, r.max_abs_diff, r.agreement)
    if worst > allowed or agreement < cfg.verify.min_agreement:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"the {cfg.format} export computes something else than PyTorch on {len(results)} images: max |diff| "
            f"{worst:.3g} (allowed {allowed:.3g}: verify.atol={cfg.verify.atol} + verify.rtol={cfg.verify.rtol} x "
            f"max |output| {scale:.3g}), label agreement {agreement:.6f} (verify.min_agreement="
            f"{cfg.verify.min_agreement}); the file was deleted. Try another opset, or report the model and this line."
        )
    return report


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild, wrap, export, verify; writes ``export.json`` into the run dir and returns it."""
    check_options(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    path = out_path(cfg, run_dir)
    outputs = OutputFolder(path.parent, "out", bool(cfg.overwrite))
    outputs.claim([path.name])  # a file of the same name that deeplab-export did not write stays
    model, train_cfg, provenance = load_with_provenance(cfg, list(HydraConfig.get().overrides.task))
    mean, std, bgr = datasets.normalisation(train_cfg)
    deploy = DeployModel(model.float().eval(), mean, std, bgr, cfg.include_preprocess, cfg.output).eval()
    meta = {**metadata(cfg, train_cfg, mean, std, bgr), "init_weights": provenance.as_dict()}
    start = time.perf_counter()
    write(cfg, train_cfg, deploy, path, meta)
    outputs.record(path.name)
    seconds = time.perf_counter() - start
    report = {"file": str(path), "format": cfg.format, "export_seconds": seconds, "metadata": meta}
    report["verify"] = verify(cfg, deploy, path)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "export.json").write_text(json.dumps(report, indent=2))
    v = report["verify"]
    print(
        f"{path} ({path.stat().st_size / 1e6:.1f} MB, {cfg.format}"
        + (f" opset {cfg.opset}" if cfg.format == "onnx" else "")
        + f", {seconds:.1f} s): max |diff| {v['max_abs_diff']:.3g} and label agreement "
        f"{100 * v['agreement']:.4f}% against PyTorch on {len(v['images'])} images "
        f"({', '.join(f'{h}x{w}' for h, w in (tuple(r['size']) for r in v['images']))})"
    )
    return report


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")
def hydra_main(cfg: DictConfig) -> None:
    with _hydra.user_errors():
        run_export(cfg)


def main() -> None:
    """``deeplab-export``."""
    _hydra.run(hydra_main)


if __name__ == "__main__":
    main()
