"""Check an exported file against the PyTorch model it came from, on images of several sizes.

Exporters have computed something else without failing (a size frozen at the example's,
``align_corners`` flipped, a pooling branch folded for one shape). Every export is
therefore run, and compared pixel by pixel, before ``deeplab-export`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .exporters import Runner
from .wrapper import DeployModel


@dataclass(frozen=True)
class Comparison:
    """What one image gave: its size, the largest absolute output difference, the largest absolute
    PyTorch output (the scale the difference is judged against), the share of equal labels."""

    name: str
    size: tuple[int, int]
    max_abs_diff: float
    agreement: float
    max_abs_output: float = 0.0


def generated_images(sizes: Sequence[Sequence[int]], seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Smooth colour fields (bilinearly enlarged 6x8 random colours plus a little noise), uint8 (H, W, 3).

    They have the broad regions and edges of photographs, so the network produces
    confident regions and boundaries rather than ties everywhere.
    """
    rng = np.random.default_rng(seed)
    images = []
    for h, w in sizes:
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        field = np.asarray(coarse.resize((w, h), Image.BILINEAR), dtype=np.float32)
        noisy = np.clip(field + rng.normal(0, 6, field.shape), 0, 255).astype(np.uint8)
        images.append((f"generated_{h}x{w}", noisy))
    return images


def file_images(files: Sequence[Path]) -> list[tuple[str, np.ndarray]]:
    images = []
    for path in files:
        with Image.open(path) as img:
            images.append((path.name, np.asarray(img.convert("RGB"))))
    return images


def _labels(output: np.ndarray, kind: str) -> np.ndarray:
    return output if kind == "labels" else output.argmax(1)


@torch.no_grad()
def compare(
    model: DeployModel, runner: Runner, images: Sequence[tuple[str, np.ndarray]], batch_of_two: bool = False
) -> list[Comparison]:
    """Run every image (batch of one, at its own size) through both; one :class:`Comparison` each.

    With ``batch_of_two`` the first image also goes in as a batch with its mirror image,
    so a batch size frozen at export time fails here rather than in deployment.
    """
    results = []
    batches = [(name, torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]) for name, rgb in images]
    if batch_of_two and batches:
        name, first = batches[0]
        batches.append((f"{name} + mirror (batch of 2)", torch.cat([first, first.flip(-1)])))
    for name, image in batches:
        rgb = image[0].permute(1, 2, 0).numpy()
        x = image if model.include_preprocess else model.preprocess(image)
        expected = model(x).numpy()
        got = runner(x.numpy())
        if got.shape != expected.shape:
            results.append(Comparison(name, tuple(rgb.shape[:2]), float("inf"), 0.0))
            continue
        labels = model.output == "labels"
        diff = 0.0 if labels else float(np.abs(got.astype(np.float64) - expected).max())
        scale = 0.0 if labels else float(np.abs(expected).max())
        agreement = float((_labels(got, model.output) == _labels(expected, model.output)).mean())
        results.append(Comparison(name, tuple(rgb.shape[:2]), diff, agreement, scale))
    return results


def summary(results: Sequence[Comparison]) -> tuple[float, float, float]:
    """(largest difference, largest PyTorch output, pixel-weighted agreement) over all images."""
    pixels = np.array([r.size[0] * r.size[1] for r in results], dtype=np.float64)
    agreement = float((np.array([r.agreement for r in results]) * pixels).sum() / pixels.sum())
    return max(r.max_abs_diff for r in results), max(r.max_abs_output for r in results), agreement


def tolerance(atol: float, rtol: float, scale: float) -> float:
    """The largest difference allowed: ``atol`` plus ``rtol`` times the output's scale.

    float32 rounding grows with the magnitude of what is summed: a trained network's
    logits reach tens, a random one's a few units, and both exports are equally right.
    """
    return atol + rtol * scale
