"""Benchmark the DenseCRF stage (CRFPool over real VOC images) for several worker counts.

Usage::

    python scripts/benchmark_crf.py [--voc-root PATH] [--images N] [--workers 1 2] [--classes 21] [--out F.json]

Probabilities come from each image's ground-truth mask plus Gaussian logit noise (fixed seed), built
before timing, so only the CRF stage is measured: pool start-up, submitting every image, draining.
The speedup is relative to workers=1 (always run first as the baseline). Not a test: numbers depend on
the machine and on whatever else is using its CPUs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeplab_cli.postprocess.crf import CRFParams, CRFPool, require_pydensecrf

DEFAULT_VOC = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc_sample" / "VOC2012"


def noisy_probs(mask: np.ndarray, classes: int, rng: np.random.Generator) -> np.ndarray:
    """Softmax of (2 * one-hot(mask) + N(0, 1)) logits: the argmax is wrong on roughly half the pixels."""
    truth = np.where(mask == 255, 0, mask).astype(np.int64) % classes
    logits = rng.normal(0.0, 1.0, (classes, *mask.shape)).astype(np.float32)
    np.put_along_axis(logits, truth[None], np.take_along_axis(logits, truth[None], 0) + 2.0, axis=0)
    probs = np.exp(logits - logits.max(0))
    probs /= probs.sum(0)
    return probs


def load_samples(voc_root: Path, classes: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """(image path, probabilities) for every image of the sample that has a segmentation mask."""
    masks = sorted((voc_root / "SegmentationClass").glob("*.png"))
    if not masks:
        raise SystemExit(f"no masks under {voc_root / 'SegmentationClass'}; pass --voc-root <VOC2012 folder>")
    rng = np.random.default_rng(seed)
    samples = []
    for mask_path in masks:
        image_path = voc_root / "JPEGImages" / f"{mask_path.stem}.jpg"
        with Image.open(mask_path) as m:
            mask = np.array(m)
        samples.append((str(image_path), noisy_probs(mask, classes, rng)))
    return samples


def run_stage(jobs: list[tuple[str, np.ndarray]], params: CRFParams, workers: int) -> tuple[float, list[np.ndarray]]:
    """Wall seconds for the whole stage, and the label maps in submission order."""
    results: dict[int, np.ndarray] = {}
    start = time.perf_counter()
    with CRFPool(params, workers=workers) as pool:
        for key, (path, probs) in enumerate(jobs):
            pool.submit(key, probs, path)
            results.update(pool.completed())
        results.update(pool.drain())
    seconds = time.perf_counter() - start
    return seconds, [results[k] for k in range(len(jobs))]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voc-root", type=Path, default=DEFAULT_VOC, help="VOC2012 folder (default: %(default)s)")
    parser.add_argument("--images", type=int, default=24, help="images to process, cycling through the sample")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=10, help="mean-field iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_pydensecrf()
    samples = load_samples(args.voc_root, args.classes, args.seed)
    jobs = [samples[i % len(samples)] for i in range(args.images)]
    heights = [p.shape[1] for _, p in jobs]
    widths = [p.shape[2] for _, p in jobs]
    image_size = {"height": [min(heights), max(heights)], "width": [min(widths), max(widths)]}
    params = CRFParams(iterations=args.iterations)
    worker_counts = [1] + [w for w in args.workers if w != 1]  # baseline first

    rows, baseline, reference = [], None, None
    for workers in worker_counts:
        seconds, labels = run_stage(jobs, params, workers)
        if reference is None:
            baseline, reference = seconds, labels
        elif not all(np.array_equal(a, b) for a, b in zip(labels, reference, strict=True)):
            raise SystemExit(f"workers={workers} gave different labels than workers=1")
        rows.append(
            {
                "workers": workers,
                "seconds": round(seconds, 3),
                "images_per_s": round(len(jobs) / seconds, 3),
                "speedup": round(baseline / seconds, 3),
            }
        )

    print(
        f"DenseCRF stage: {len(jobs)} images, {args.classes} classes, {args.iterations} iterations, "
        f"H {image_size['height']} x W {image_size['width']}\n"
    )
    print("| workers | seconds | images/s | speedup vs 1 |\n|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['workers']} | {row['seconds']:.2f} | {row['images_per_s']:.2f} | {row['speedup']:.2f}x |")
    if args.out is not None:
        report = {"images": len(jobs), "image_size": image_size, "results": rows}
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":  # required: spawned workers re-import this module
    raise SystemExit(main())
