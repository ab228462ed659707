"""DenseCRF post-processing: numbers on synthetic and real VOC images, validation, and the worker pool."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from clitools import VOC_SAMPLE, needs_shared
from PIL import Image

from deeplab_cli.errors import ConfigError, DeepLabError
from deeplab_cli.postprocess.crf import (
    CRFError,
    CRFParams,
    CRFPool,
    crf_task,
    default_workers,
    dense_crf,
    require_pydensecrf,
)

pytest.importorskip("pydensecrf.densecrf", reason="DenseCRF tests need pydensecrf (pip install pydensecrf2)")

VOC_ROOT = VOC_SAMPLE / "VOC2012"
H, W, C = 40, 60, 3


def two_regions(seed: int = 0, flip: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red | blue image, its true labels (0 | 1) and probabilities whose argmax is wrong on ~``flip`` pixels."""
    rng = np.random.default_rng(seed)
    image = np.zeros((H, W, 3), np.uint8)
    image[:, : W // 2] = (200, 30, 30)
    image[:, W // 2 :] = (30, 30, 200)
    truth = np.zeros((H, W), np.int64)
    truth[:, W // 2 :] = 1
    wrong = (truth + rng.integers(1, C, (H, W))) % C
    noisy = np.where(rng.random((H, W)) < flip, wrong, truth)
    probs = np.full((C, H, W), 0.2, np.float32)
    np.put_along_axis(probs, noisy[None], 0.6, axis=0)
    return image, truth, probs


def test_dense_crf_follows_image_edges_not_noisy_argmax() -> None:
    image, truth, probs = two_regions()
    argmax_acc = (probs.argmax(0) == truth).mean()
    labels = dense_crf(probs, image, CRFParams())
    assert labels.shape == (H, W)
    assert labels.dtype == np.uint8
    assert labels.min() >= 0 and labels.max() <= C - 1
    assert 0.75 <= argmax_acc <= 0.85
    assert (labels == truth).mean() >= 0.98
    assert (labels != probs.argmax(0)).mean() >= 0.15
    np.testing.assert_array_equal(labels, dense_crf(probs, image, CRFParams()))


def test_zero_pairwise_weights_leave_argmax_unchanged() -> None:
    """With both kernels off the CRF is the unary alone, so it must return the network's argmax."""
    image, _, probs = two_regions(seed=1)
    labels = dense_crf(probs, image, CRFParams(iterations=1, bi_w=0.0, pos_w=0.0))
    np.testing.assert_array_equal(labels, probs.argmax(0))


def test_float16_probs_and_read_only_image() -> None:
    image, truth, probs = two_regions(seed=2)
    image.setflags(write=False)  # like np.asarray(PIL image); pydensecrf rejects read-only buffers itself
    labels16 = dense_crf(probs.astype(np.float16), image, CRFParams())
    assert labels16.dtype == np.uint8
    assert (labels16 == truth).mean() >= 0.98
    np.testing.assert_array_equal(labels16, dense_crf(probs, image, CRFParams()))


def test_shape_mismatch_names_both_shapes() -> None:
    image, _, probs = two_regions()
    with pytest.raises(ValueError, match=r"\(3, 40, 60\).*\(40, 59, 3\)"):
        dense_crf(probs, image[:, :59], CRFParams())
    with pytest.raises(ValueError, match=r"\(40, 60\)"):
        dense_crf(probs, image[..., 0], CRFParams())
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(probs, image.astype(np.float32) / 255, CRFParams())


@pytest.mark.parametrize(
    ("field", "value"),
    [("bi_xy_std", 0.0), ("bi_rgb_std", -3.0), ("pos_xy_std", float("nan")), ("bi_w", -1.0), ("pos_w", -0.5)],
)
def test_params_validation_names_the_key(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"crf\.{field}={value}"):
        CRFParams(**{field: value})


def test_params_iterations_and_as_dict() -> None:
    with pytest.raises(ConfigError, match=r"crf\.iterations=0"):
        CRFParams(iterations=0)
    assert CRFParams(bi_w=5.0).as_dict() == {
        "iterations": 10,
        "bi_w": 5.0,
        "bi_xy_std": 67.0,
        "bi_rgb_std": 3.0,
        "pos_w": 3.0,
        "pos_xy_std": 1.0,
    }
    assert CRFParams(pos_w=0.0).pos_w == 0.0


def test_require_pydensecrf_explains_install(monkeypatch: pytest.MonkeyPatch) -> None:
    require_pydensecrf()  # installed: no error
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ConfigError, match="pip install") as info:
        require_pydensecrf()
    message = str(info.value)
    assert "pydensecrf2" in message and "deeplab-cli[crf]" in message and "crf=none" in message
    image, _, probs = two_regions()
    with pytest.raises(ConfigError, match="pydensecrf2"):
        dense_crf(probs, image, CRFParams())


def test_default_workers_is_positive() -> None:
    assert 1 <= default_workers() <= (os.cpu_count() or 1)


def write_images(tmp_path: Path, count: int = 6) -> list[tuple[str, np.ndarray]]:
    """``count`` two-region images on disk (PNG and JPEG, varying sizes) with noisy probabilities each."""
    items = []
    for i in range(count):
        image, _, probs = two_regions(seed=10 + i)
        image, probs = image[: H - i], probs[:, : H - i]  # different heights catch mixed-up results
        path = tmp_path / f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(image).save(path, quality=95)
        items.append((str(path), np.ascontiguousarray(probs)))
    return items


def test_pool_matches_in_process_and_bounds_pending(tmp_path: Path) -> None:
    items = write_images(tmp_path)
    params = CRFParams(iterations=5)
    with CRFPool(params, workers=0) as pool:
        for key, (path, probs) in enumerate(items):
            pool.submit(key, probs, path)
            assert pool.pending == 0
        expected = dict(pool.completed())
        assert list(pool.drain()) == []
    assert sorted(expected) == list(range(len(items)))

    seen: list[int] = []
    results: dict[int, np.ndarray] = {}
    with CRFPool(params, workers=2, max_pending=2) as pool:
        for key, (path, probs) in enumerate(items):
            pool.submit(key, probs, path)
            assert pool.pending <= 2
            for done_key, labels in pool.completed():
                seen.append(done_key)
                results[done_key] = labels
        for done_key, labels in pool.drain():
            seen.append(done_key)
            results[done_key] = labels
        assert pool.pending == 0
    assert sorted(seen) == list(range(len(items)))
    for key, (path, probs) in enumerate(items):
        assert results[key].shape == probs.shape[1:]
        np.testing.assert_array_equal(results[key], expected[key])
        np.testing.assert_array_equal(results[key], crf_task(probs, path, params))


def test_pool_completed_does_not_block(tmp_path: Path) -> None:
    (path, probs), *_ = write_images(tmp_path, count=1)
    with CRFPool(CRFParams(iterations=2), workers=1) as pool:
        pool.submit("a", probs, path)
        assert pool.pending == 1
        started = time.monotonic()
        got: list[tuple[object, np.ndarray]] = []
        while not got and time.monotonic() - started < 60:
            call = time.monotonic()
            got = list(pool.completed())  # returns at once, empty while the task is still running
            assert time.monotonic() - call < 0.5
            time.sleep(0.02)
        assert [key for key, _ in got] == ["a"]
        assert pool.pending == 0 and list(pool.drain()) == []


def test_exception_in_with_block_cancels_and_shuts_down(tmp_path: Path) -> None:
    (path, probs), *_ = write_images(tmp_path, count=1)
    with pytest.raises(RuntimeError, match="boom"), CRFPool(CRFParams(), workers=1, max_pending=8) as pool:
        for key in range(6):
            pool.submit(key, probs, path)
        assert pool.pending == 6
        raise RuntimeError("boom")
    assert pool.pending == 0
    with pytest.raises(RuntimeError):  # the executor is gone: no silent work after an error
        pool.submit("late", probs, path)


def test_missing_image_raises_crf_error_naming_path(tmp_path: Path) -> None:
    (path, probs), *_ = write_images(tmp_path, count=1)
    missing = str(tmp_path / "nope" / "missing.jpg")
    with CRFPool(CRFParams(), workers=0) as pool, pytest.raises(CRFError, match="FileNotFoundError") as info:
        pool.submit("x", probs, missing)
    assert missing in str(info.value)
    assert isinstance(info.value, DeepLabError)

    with pytest.raises(CRFError, match="FileNotFoundError") as info, CRFPool(CRFParams(), workers=2) as pool:
        pool.submit("ok", probs, path)
        pool.submit("x", probs, missing)
        list(pool.drain())
    assert f"DenseCRF failed on {missing}" in str(info.value)


def test_bad_shape_in_worker_raises_crf_error(tmp_path: Path) -> None:
    (path, probs), *_ = write_images(tmp_path, count=1)
    with pytest.raises(CRFError, match="ValueError") as info, CRFPool(CRFParams(), workers=1) as pool:
        pool.submit("x", probs[:, :-3], path)
        list(pool.drain())
    assert path in str(info.value)


@needs_shared(VOC_ROOT)
def test_real_voc_image_and_mask() -> None:
    """A real photo with softened, noisy probabilities from its real mask (full size, ~1-2 s)."""
    masks = sorted((VOC_ROOT / "SegmentationClass").glob("*.png"))
    if not masks:
        pytest.skip(f"VOC sample not found at {VOC_ROOT} (expected SegmentationClass/*.png and JPEGImages/*.jpg)")
    mask_path = masks[0]
    image_path = VOC_ROOT / "JPEGImages" / f"{mask_path.stem}.jpg"
    with Image.open(mask_path) as m:
        assert m.mode == "P"
        mask = np.array(m)
    valid = mask != 255
    truth = np.where(valid, mask, 0).astype(np.int64)
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 1.0, (21, *mask.shape)).astype(np.float32)
    np.put_along_axis(logits, truth[None], np.take_along_axis(logits, truth[None], 0) + 2.0, axis=0)
    probs = np.exp(logits - logits.max(0))
    probs /= probs.sum(0)
    argmax = probs.argmax(0)

    labels = crf_task(probs.astype(np.float16), str(image_path), CRFParams())
    with Image.open(image_path) as img:
        assert labels.shape == (img.height, img.width) == mask.shape
    assert (labels != argmax).mean() >= 0.2
    assert (argmax == truth)[valid].mean() < 0.7
    assert (labels == truth)[valid].mean() >= 0.9
