"""Export acceptance: every ``model=`` preset and the three imported layouts, ONNX against PyTorch.

For each model this script makes a checkpoint with seeded random weights (ours from the
preset; torchvision, kazuto1011 and VainF files in their published key layouts), then runs
the commands a user runs, as subprocesses:

1. ``deeplab-export checkpoint=C out=M.onnx verify.input=IMAGES`` (dynamic size): the
   command's own check, ONNX Runtime against PyTorch on every image at its size, gives the
   largest absolute logit difference and the label agreement;
2. ``deeplab-predict checkpoint=C`` and ``deeplab-predict checkpoint=M.onnx`` on the same
   images: the share of equal pixels in the mask PNGs they write.

It needs the repository's checkout (the imported layouts come from the key lists in
``../shared/reference`` through the tests' helpers) and the ``export`` extra. Usage::

    python scripts/export_acceptance.py [--only a,b] [--images DIR] [--work DIR] [--out docs/export_acceptance.md]

A table row is written after every model, so an interrupted run keeps what it measured.
Random weights are the hard case for label agreement: their logits are closer to ties than
a trained model's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the key-list helpers live with the importer tests

from deeplab_cli.config import datasets, models  # noqa: E402
from deeplab_cli.config.compose import compose  # noqa: E402
from deeplab_cli.engine.runtime.checkpoint import atomic_save  # noqa: E402
from deeplab_cli.tools.benchmark.report import cpu_name  # noqa: E402
from deeplab_cli.tools.benchmark.settings import model_presets  # noqa: E402

DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "voc_sample" / "VOC2012" / "JPEGImages"
#: imported layouts: name -> (writer of the file, overrides the user gives with it)
IMPORTED = ("torchvision_deeplabv3_resnet101", "kazuto1011_deeplabv2_resnet101_msc", "vainf_deeplabv3plus_mobilenet")


@dataclass
class Row:
    model: str
    params: int
    onnx_mb: float
    export_s: float
    max_abs_diff: float
    max_abs_logit: float
    export_agreement: float
    predict_agreement: float
    images: int
    status: str


def our_checkpoint(preset: str, path: Path, seed: int) -> tuple[Path, list[str]]:
    cfg = compose([f"model={preset}", "model.pretrained=false"])
    datasets.resolve_preprocess(cfg)
    torch.manual_seed(seed)
    model = models.make_model(cfg, pretrained=False)
    state = {"format": "deeplab-cli", "version": 1, "model": model.state_dict(),
             "config": OmegaConf.to_container(cfg, resolve=True)}  # fmt: skip
    atomic_save(state, path)
    return path, []


def imported_checkpoint(name: str, path: Path, seed: int) -> tuple[Path, list[str]]:
    from test_importers import KAZUTO, random_state, read_keys, vainf_ckpt

    path = path.with_suffix(".pth")
    if name.startswith("torchvision"):
        torch.manual_seed(seed)
        tv = torchvision.models.segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=21)
        torch.save(tv.state_dict(), path)
    elif name.startswith("kazuto"):
        torch.save(random_state(read_keys(KAZUTO), seed=seed), path)
    else:
        torch.save(vainf_ckpt(random_state(read_keys("vainf_deeplabv3plus_mobilenet_os16.keys.tsv"), seed)), path)
    return path, ["dataset=voc"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / args[0]  # the console script of this environment
    proc = subprocess.run([str(script), *args[1:]], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc


def masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def accept(name: str, make: Callable[[str, Path, int], tuple[Path, list[str]]], images: Path, work: Path) -> Row:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    ckpt, extra = make(name, folder / "model.pt", 0)
    onnx = folder / "model.onnx"
    quiet = ["eval.num_workers=0", "eval.progress=false"]
    try:
        run("deeplab-export", f"checkpoint={ckpt}", f"out={onnx}", f"verify.input={images}",
            f"hydra.run.dir={folder / 'export'}", *extra)  # fmt: skip
        report = json.loads((folder / "export" / "export.json").read_text())
        for source, sub in ((ckpt, "ckpt"), (onnx, "onnx")):
            run("deeplab-predict", f"checkpoint={source}", f"input={images}", f"output={folder / sub}/",
                f"hydra.run.dir={folder / ('predict_' + sub)}", *quiet, *extra)  # fmt: skip
    except RuntimeError as exc:
        return Row(name, 0, 0.0, 0.0, float("nan"), float("nan"), 0.0, 0.0, 0, f"failed: {exc}")
    a, b = masks(folder / "ckpt"), masks(folder / "onnx")
    if a.keys() != b.keys() or not a:
        return Row(
            name,
            0,
            0.0,
            0.0,
            float("nan"),
            float("nan"),
            0.0,
            0.0,
            0,
            f"failed: masks differ in names ({len(a)}, {len(b)})",
        )
    same = sum(int((a[k] == b[k]).sum()) for k in a) / sum(m.size for m in a.values())
    weights = torch.load(ckpt, map_location="cpu", weights_only=False)
    from deeplab_cli.models.importers.detect import state_dict_of

    params = sum(t.numel() for k, t in state_dict_of(weights).items() if not k.endswith(("running_mean",
                 "running_var", "num_batches_tracked")))  # fmt: skip
    v = report["verify"]
    ok = v["agreement"] >= 0.9999 and same >= 0.9999
    size = onnx.stat().st_size / 1e6
    return Row(name, params, size, report["export_seconds"], v["max_abs_diff"], v["max_abs_output"], v["agreement"],
               same, len(a), "ok" if ok else "below 99.99%")  # fmt: skip


def table(rows: list[Row], images: Path, seconds: float) -> str:
    import onnxruntime

    lines = [
        f"ONNX export acceptance on {len(list(images.glob('*.jpg')))} images of {os.path.relpath(images, REPO)} "
        f"({cpu_name()}, {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}; seeded random weights; {seconds / 60:.0f} min in all).",
        "",
        "| model | parameters | ONNX MB | export s | max abs logit diff | largest abs logit "
        "| label agreement (export check) | deeplab-predict masks equal | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.params:,} | {r.onnx_mb:.1f} | {r.export_s:.0f} | {r.max_abs_diff:.2g} | "
            f"{r.max_abs_logit:.3g} | "
            f"{100 * r.export_agreement:.4f}% | {100 * r.predict_agreement:.4f}% | {r.status} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated presets / imported names (default: all)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deeplab-export-acceptance"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "export_acceptance.md")
    args = parser.parse_args()
    if not args.images.is_dir():
        parser.error(f"--images {args.images} is not a folder of images")
    entries: list[tuple[str, Callable[[str, Path, int], tuple[Path, list[str]]]]] = [
        *((n, imported_checkpoint) for n in IMPORTED),
        *((p, our_checkpoint) for p in model_presets()),
    ]
    if args.only:
        wanted = args.only.split(",")
        entries = [e for e in entries if e[0] in wanted]
    rows: list[Row] = []
    start = time.perf_counter()
    for name, make in entries:
        t0 = time.perf_counter()
        rows.append(accept(name, make, args.images, args.work))
        print(f"{time.perf_counter() - t0:6.0f} s  {name}: {rows[-1].status}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table(rows, args.images, time.perf_counter() - start))
        args.out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    print(args.out.read_text())
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
