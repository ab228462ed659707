"""Data pipeline: label resizing, losses, paired transforms, VOC reader, synthetic set, sampler."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clitools import VOC_SAMPLE, require_shared
from PIL import Image
from torchvision import tv_tensors

from deeplab_cli.data.labels import LabelMapping
from deeplab_cli.data.layout import DatasetError
from deeplab_cli.data.sampler import IterationBatchSampler
from deeplab_cli.data.segmentation import load_mask
from deeplab_cli.data.synthetic import MARKER, SyntheticSpec, ensure_synthetic_voc
from deeplab_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomScale, eval_transforms, train_transforms
from deeplab_cli.data.voc import read_split, resolve_voc_dir, voc_dataset
from deeplab_cli.engine.train.losses import resize_labels, segmentation_loss, total_loss

VALID_LABELS = set(range(21)) | {255}
MEAN = torch.tensor(IMAGENET_MEAN)[:, None, None]
STD = torch.tensor(IMAGENET_STD)[:, None, None]


@pytest.fixture
def voc_sample() -> Path:
    require_shared(VOC_SAMPLE / "VOC2012" / "JPEGImages")
    return VOC_SAMPLE


def _pil_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.array(Image.fromarray(labels).resize((w, h), Image.NEAREST))


# ------------------------------------------------------------------ label resizing


SIZE_PAIRS = [
    ((321, 321), (41, 41)),
    ((64, 64), (9, 9)),
    ((97, 75), (13, 10)),
    ((5, 5), (17, 17)),
    ((375, 500), (47, 63)),
    ((7, 3), (2, 11)),
]


@pytest.mark.parametrize(("src", "dst"), SIZE_PAIRS)
def test_resize_labels_matches_pil_nearest(src, dst):
    labels = np.random.default_rng(sum(src) + sum(dst)).integers(0, 256, size=src, dtype=np.uint8)
    got = resize_labels(torch.from_numpy(labels)[None].long(), dst)
    assert got.shape == (1, *dst) and got.dtype == torch.int64
    np.testing.assert_array_equal(got[0].numpy(), _pil_nearest(labels, dst))


def test_plain_nearest_interpolation_is_shifted_relative_to_pil():
    """Why ``nearest-exact``: torch's ``nearest`` samples floor(i * scale), half a pixel off."""
    differs = []
    for src, dst in SIZE_PAIRS:
        labels = np.random.default_rng(sum(src) + sum(dst)).integers(0, 256, size=src, dtype=np.uint8)
        plain = F.interpolate(torch.from_numpy(labels)[None, None].float(), size=dst, mode="nearest")
        differs.append(not np.array_equal(plain[0, 0].long().numpy(), _pil_nearest(labels, dst)))
    assert any(differs)
    # 8 -> 4: PIL keeps the odd rows/columns (pixel centres), plain nearest the even ones
    labels = torch.arange(64).view(1, 8, 8)
    assert torch.equal(resize_labels(labels, (4, 4)), labels[:, 1::2, 1::2])


def test_resize_labels_same_size_is_identity():
    labels = torch.randint(0, 21, (2, 9, 9))
    assert resize_labels(labels, (9, 9)) is labels


# ------------------------------------------------------------------ losses


def _logits(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_nearest_policy_subsamples_labels_and_ignores_255():
    labels = torch.randint(0, 3, (1, 8, 8), generator=torch.Generator().manual_seed(1))
    logits = _logits((1, 3, 4, 4))
    expected = F.cross_entropy(logits, labels[:, 1::2, 1::2])
    assert segmentation_loss(logits, labels, "nearest") == pytest.approx(float(expected), rel=1e-6)

    labels[0, 1, 1] = 255  # the label pixel that logits (0, 0) are trained on
    base = segmentation_loss(logits, labels, "nearest")
    changed = logits.clone()
    changed[0, :, 0, 0] += torch.tensor([5.0, -3.0, 1.0])
    assert segmentation_loss(changed, labels, "nearest") == pytest.approx(float(base), rel=1e-6)
    changed[0, :, 0, 1] += torch.tensor([5.0, -3.0, 1.0])  # a logit whose label is kept
    assert segmentation_loss(changed, labels, "nearest") != pytest.approx(float(base), rel=1e-6)


def test_upsample_policy_upsamples_logits_and_ignores_255():
    labels = torch.randint(0, 3, (1, 8, 8), generator=torch.Generator().manual_seed(2))
    logits = _logits((1, 3, 4, 4))
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    assert segmentation_loss(logits, labels, "upsample") == pytest.approx(float(F.cross_entropy(up, labels)), rel=1e-6)
    changed = logits.clone()
    changed[0, :, 0, 0] += torch.tensor([5.0, -3.0, 1.0])
    # Bilinear x2 (align_corners=False): logit (0, 0) reaches output rows/cols 0..2 only.
    assert segmentation_loss(changed, labels, "upsample") != pytest.approx(
        float(segmentation_loss(logits, labels, "upsample")), rel=1e-6
    )
    labels[0, :3, :3] = 255
    base = segmentation_loss(logits, labels, "upsample")
    assert segmentation_loss(changed, labels, "upsample") == pytest.approx(float(base), rel=1e-6)


def test_unknown_label_policy_raises():
    with pytest.raises(ValueError, match="bicubic"):
        segmentation_loss(_logits((1, 3, 4, 4)), torch.zeros(1, 8, 8, dtype=torch.long), "bicubic")


@pytest.mark.parametrize("policy", ["nearest", "upsample"])
def test_total_loss_adds_one_term_per_aux_output(policy):
    labels = torch.randint(0, 4, (2, 9, 9), generator=torch.Generator().manual_seed(3))
    labels[:, 0] = 255
    out, aux1, aux2 = _logits((2, 4, 5, 5), 1), _logits((2, 4, 3, 3), 2), _logits((2, 4, 9, 9), 3)
    terms = [segmentation_loss(t, labels, policy) for t in (out, aux1, aux2)]
    assert torch.equal(total_loss({"out": out}, labels, policy), terms[0])
    assert torch.equal(total_loss({"out": out, "aux": []}, labels, policy), terms[0])
    assert torch.equal(total_loss({"out": out, "aux": [aux1, aux2]}, labels, policy), terms[0] + terms[1] + terms[2])


# ------------------------------------------------------------------ transforms


def _pair(h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
    mask = tv_tensors.Mask(torch.randint(0, 21, (h, w), dtype=torch.int64, generator=g))
    return image, mask


def test_train_transforms_output_types_and_shapes():
    image, mask = _pair(50, 70)
    torch.manual_seed(0)
    out_image, out_mask = train_transforms(65, scale_range=(0.5, 1.5))(image, mask)
    assert out_image.shape == (3, 65, 65) and out_image.dtype == torch.float32
    assert out_mask.shape == (65, 65) and out_mask.dtype == torch.int64
    assert isinstance(out_mask, tv_tensors.Mask)


def test_padding_uses_mean_colour_and_ignore_label():
    image = tv_tensors.Image(torch.zeros(3, 20, 30, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(20, 30, dtype=torch.int64))
    black = (0 - MEAN) / STD  # the normalised image pixels
    for seed in range(4):
        torch.manual_seed(seed)
        out_image, out_mask = train_transforms(48, scale_range=(1.0, 1.0), flip=False)(image, mask)
        pad = out_mask == 255
        # the whole 20x30 image always lies inside the 48x48 crop; the rest is padding
        assert int((out_mask == 1).sum()) == 20 * 30
        assert int(pad.sum()) == 48 * 48 - 20 * 30
        assert set(out_mask.unique().tolist()) == {1, 255}
        # padded image = mean colour (rounded to uint8) -> ~0 after normalisation, every channel
        assert out_image[:, pad].abs().max() < 0.01
        torch.testing.assert_close(out_image[:, ~pad], black.expand(3, 48, 48)[:, ~pad], atol=1e-5, rtol=0)


def test_random_scale_resizes_mask_like_pil_nearest_and_keeps_alignment():
    image, mask = _pair(37, 53, seed=4)
    mask = tv_tensors.Mask(mask.to(torch.uint8))
    for seed in range(3):
        torch.manual_seed(seed)
        out_image, out_mask = RandomScale(0.6, 1.4)(image, mask)
        h, w = out_mask.shape
        assert out_image.shape[-2:] == (h, w)
        assert 0.6 * 37 - 1 <= h <= 1.4 * 37 + 1 and round(53 * h / 37) in range(w - 1, w + 2)
        np.testing.assert_array_equal(out_mask.numpy(), _pil_nearest(mask.numpy(), (h, w)))


def test_random_scale_rejects_bad_ranges():
    for low, high in ((0.0, 1.0), (-0.5, 1.0), (2.0, 1.0)):
        with pytest.raises(ValueError, match="scale range"):
            RandomScale(low, high)
    with pytest.raises(ValueError):
        train_transforms(64, scale_range=(1.5, 0.5))


def test_flip_moves_image_and_mask_together():
    cols = torch.arange(20).expand(20, 20)
    image = tv_tensors.Image(torch.stack([cols * 10, torch.zeros_like(cols), torch.zeros_like(cols)]).to(torch.uint8))
    mask = tv_tensors.Mask(cols.clone())
    transform = train_transforms(20, scale_range=(1.0, 1.0), flip=True)
    flipped = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, mask)
        torch.manual_seed(seed)
        again_image, again_mask = transform(image, mask)
        assert torch.equal(out_image, again_image) and torch.equal(out_mask, again_mask)
        red = ((out_image[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255).round() / 10
        assert torch.equal(red.long(), out_mask), "image and mask columns must stay aligned"
        flipped.add(int(out_mask[0, 0]) == 19)
        assert torch.equal(out_mask[0], torch.arange(19, -1, -1) if out_mask[0, 0] == 19 else torch.arange(20))
    assert flipped == {True, False}


def test_eval_transforms_keep_size_and_labels():
    image, mask = _pair(11, 13)
    out_image, out_mask = eval_transforms()(image, mask)
    assert out_image.shape == (3, 11, 13) and out_image.dtype == torch.float32
    assert torch.equal(out_mask, mask)
    torch.testing.assert_close(out_image, (image.float() / 255 - MEAN) / STD, atol=1e-5, rtol=0)


def test_transforms_never_invent_labels_on_real_mask(voc_sample):
    voc = voc_sample / "VOC2012"
    mask_np = load_mask(voc / "SegmentationClass" / "2011_003066.png", LabelMapping(21))
    classes = set(np.unique(mask_np).tolist())
    assert classes == {0, 5, 9, 11, 15, 255}
    with Image.open(voc / "JPEGImages" / "2011_003066.jpg") as img:
        image = tv_tensors.Image(torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1))
    mask = tv_tensors.Mask(torch.from_numpy(mask_np))
    transform = train_transforms(321, scale_range=(0.5, 2.0))
    for seed in range(4):
        torch.manual_seed(seed)
        _, out = transform(image, mask)
        assert out.shape == (321, 321)
        assert set(out.unique().tolist()) <= classes


# ------------------------------------------------------------------ VOC reader on real data


def test_resolve_voc_dir_accepts_any_parent(voc_sample, tmp_path):
    voc = voc_sample / "VOC2012"
    assert resolve_voc_dir(voc_sample) == voc
    assert resolve_voc_dir(voc) == voc
    (tmp_path / "VOCdevkit").mkdir()
    os.symlink(voc, tmp_path / "VOCdevkit" / "VOC2012")
    assert resolve_voc_dir(tmp_path) == tmp_path / "VOCdevkit" / "VOC2012"
    assert resolve_voc_dir(tmp_path / "VOCdevkit") == tmp_path / "VOCdevkit" / "VOC2012"
    assert len(voc_dataset(tmp_path, "val")) == 8


def test_voc_sample_splits_and_items(voc_sample):
    val = voc_dataset(voc_sample, "val")
    train = voc_dataset(voc_sample / "VOC2012", "train")
    assert len(val) == 8 and len(train) == 4
    assert len(voc_dataset(voc_sample, "trainval")) == 12
    assert val.ids[0] == "2007_000033" and train.ids[0] == "2011_000003"
    assert not set(val.ids) & set(train.ids)
    for ds in (val, train):
        for i in range(len(ds)):
            image, mask, index = ds[i]
            assert index == i
            with Image.open(ds.image_path(i)) as img:
                w, h = img.size
            assert image.shape == (3, h, w) and image.dtype == torch.uint8
            assert mask.shape == (h, w) and mask.dtype == torch.int64
            assert max(h, w) == 500 and 300 < min(h, w) <= 375
            values = set(np.unique(mask.numpy()).tolist())
            assert values <= VALID_LABELS and 255 in values and len(values - {0, 255}) >= 1
    image, mask, _ = val[0]
    assert image.shape == (3, 366, 500)
    rgb = val.load_rgb(0)
    assert rgb.shape == (366, 500, 3) and rgb.dtype == np.uint8
    assert torch.equal(image, torch.from_numpy(rgb).permute(2, 0, 1))
    assert torch.equal(mask, torch.from_numpy(np.array(Image.open(val.mask_path(0)))).long())


def test_voc_sample_with_train_transforms_is_seeded(voc_sample):
    ds = voc_dataset(voc_sample, "train", transforms=train_transforms(97, scale_range=(0.5, 1.5)))
    image, mask, index = ds[(2, 1234)]
    image2, mask2, _ = ds[(2, 1234)]
    assert index == 2
    assert image.shape == (3, 97, 97) and image.dtype == torch.float32
    assert mask.shape == (97, 97) and mask.dtype == torch.int64
    assert torch.equal(image, image2) and torch.equal(mask, mask2)
    raw = set(np.unique(load_mask(ds.mask_path(2), LabelMapping(21))).tolist())
    assert set(mask.unique().tolist()) <= raw | {255}
    other, _, _ = ds[(2, 4321)]
    assert not torch.equal(image, other)


# ------------------------------------------------------------------ dataset errors


def _mini_voc(root: Path, image_size=(8, 6), mask_size=(8, 6), mask_mode="P", splits=("train", "val")) -> Path:
    voc = root / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    Image.new("RGB", image_size, (10, 20, 30)).save(voc / "JPEGImages" / "a.jpg")
    Image.new(mask_mode, mask_size, 1 if mask_mode in ("P", "L") else (128, 0, 0)).save(
        voc / "SegmentationClass" / "a.png"
    )
    for split in splits:
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("a\n")
    return voc


def test_resolve_voc_dir_error_names_root_and_script():
    with pytest.raises(DatasetError) as info:
        resolve_voc_dir("/nonexistent")
    assert "/nonexistent" in str(info.value)
    assert "deeplab-prepare voc --root /nonexistent" in str(info.value)


def test_missing_split_names_list_and_available_splits(tmp_path):
    voc = _mini_voc(tmp_path)
    with pytest.raises(DatasetError) as info:
        voc_dataset(tmp_path, "test")
    message = str(info.value)
    assert str(voc / "ImageSets" / "Segmentation" / "test.txt") in message
    assert "available splits: train, val" in message
    with pytest.raises(DatasetError, match="deeplab-prepare voc"):
        read_split(voc, "train_aug")


def test_empty_split_names_file(tmp_path):
    voc = _mini_voc(tmp_path)
    lst = voc / "ImageSets" / "Segmentation" / "train.txt"
    lst.write_text("\n  \n")
    with pytest.raises(DatasetError) as info:
        voc_dataset(tmp_path, "train")
    assert str(lst) in str(info.value) and "empty" in str(info.value)


def test_missing_mask_folder_is_named(tmp_path):
    voc = _mini_voc(tmp_path)
    with pytest.raises(DatasetError) as info:
        voc_dataset(tmp_path, "train", mask_dir="SegmentationClassAug")
    assert str(voc / "SegmentationClassAug") in str(info.value)


def test_rgb_mask_is_rejected_naming_file(tmp_path):
    voc = _mini_voc(tmp_path, mask_mode="RGB")
    ds = voc_dataset(tmp_path, "train")
    with pytest.raises(DatasetError) as info:
        ds[0]
    assert str(voc / "SegmentationClass" / "a.png") in str(info.value)
    assert "RGB" in str(info.value)


def test_greyscale_mask_is_accepted(tmp_path):
    _mini_voc(tmp_path, mask_mode="L")
    _, mask, _ = voc_dataset(tmp_path, "train")[0]
    assert mask.shape == (6, 8) and set(mask.unique().tolist()) == {1}


def test_mask_image_size_mismatch_names_both_files(tmp_path):
    voc = _mini_voc(tmp_path, image_size=(8, 6), mask_size=(9, 6))
    with pytest.raises(DatasetError) as info:
        voc_dataset(tmp_path, "train")[0]
    message = str(info.value)
    assert str(voc / "SegmentationClass" / "a.png") in message
    assert str(voc / "JPEGImages" / "a.jpg") in message


# ------------------------------------------------------------------ synthetic VOC


SMALL = SyntheticSpec(num_train=6, num_val=3)


def _files(voc: Path) -> dict[str, bytes]:
    return {str(p.relative_to(voc)): p.read_bytes() for p in sorted(voc.rglob("*")) if p.is_file()}


def test_synthetic_layout_and_masks(tmp_path):
    voc = ensure_synthetic_voc(tmp_path, SMALL)
    assert voc == tmp_path / "VOC2012"
    train = [f"synthetic_train_{i:05d}" for i in range(6)]
    val = [f"synthetic_val_{i:05d}" for i in range(3)]
    assert read_split(voc, "train") == train
    assert read_split(voc, "val") == val
    assert read_split(voc, "trainval") == train + val
    assert sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg")) == sorted(train + val)
    assert sorted(p.stem for p in (voc / "SegmentationClass").glob("*.png")) == sorted(train + val)
    for image_id in train + val:
        with Image.open(voc / "SegmentationClass" / f"{image_id}.png") as m:
            assert m.mode == "P"
            label = np.array(m)
        with Image.open(voc / "JPEGImages" / f"{image_id}.jpg") as img:
            assert img.mode == "RGB" and img.size == label.shape[::-1]
        assert SMALL.min_size <= min(label.shape) and max(label.shape) <= SMALL.max_size
        values = set(np.unique(label).tolist())
        assert values <= VALID_LABELS and 255 in values and 0 in values and len(values) >= 3
        # the 255 band separates classes: 4-neighbours that are both labelled agree
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            both = (a != 255) & (b != 255)
            assert np.array_equal(a[both], b[both]), image_id
    ds = voc_dataset(tmp_path, "val")
    assert len(ds) == 3 and ds[0][0].shape[-2:] == ds[0][1].shape


def test_synthetic_is_cached_deterministic_and_spec_sensitive(tmp_path):
    voc = ensure_synthetic_voc(tmp_path / "a", SMALL)
    mtimes = {p: p.stat().st_mtime_ns for p in voc.rglob("*") if p.is_file()}
    assert ensure_synthetic_voc(tmp_path / "a", SMALL) == voc
    assert {p: p.stat().st_mtime_ns for p in voc.rglob("*") if p.is_file()} == mtimes

    other = ensure_synthetic_voc(tmp_path / "b", SMALL)
    assert _files(voc) == _files(other)
    assert (voc / MARKER).is_file()

    changed = SyntheticSpec(num_train=7, num_val=3, seed=1)
    ensure_synthetic_voc(tmp_path / "a", changed)
    assert len(read_split(voc, "train")) == 7
    first = "JPEGImages/synthetic_train_00000.jpg"
    assert _files(voc)[first] != _files(other)[first]
    # ... and going back to the first spec restores the original bytes
    ensure_synthetic_voc(tmp_path / "a", SMALL)
    restored = _files(voc)
    # (files of the bigger spec may be left behind; they are listed nowhere)
    restored.pop("JPEGImages/synthetic_train_00006.jpg", None)
    restored.pop("SegmentationClass/synthetic_train_00006.png", None)
    assert restored == _files(other)


# ------------------------------------------------------------------ sampler


def _batches(**kwargs) -> list[list[tuple[int, int]]]:
    return list(IterationBatchSampler(**kwargs))


def test_sampler_resume_yields_tail_of_uninterrupted_run():
    args = {"dataset_size": 10, "batch_size": 3, "num_batches": 11, "seed": 5}
    full = _batches(**args)
    assert len(full) == 11 and all(len(b) == 3 for b in full)
    for k in (1, 3, 4, 10, 11):
        sampler = IterationBatchSampler(start=k, **args)
        assert len(sampler) == 11 - k
        assert list(sampler) == full[k:]
    assert _batches(**args) == full  # pure function of the arguments
    assert _batches(**{**args, "seed": 6}) != full
    seeds = [s for batch in full for _, s in batch]
    assert len(set(seeds)) == len(seeds)


def test_sampler_epochs_are_permutations():
    full = _batches(dataset_size=12, batch_size=3, num_batches=12, seed=0)
    epochs = [[i for batch in full[e * 4 : (e + 1) * 4] for i, _ in batch] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(12))
    assert epochs[0] != epochs[1]
    # a dataset that does not divide: each epoch still has no repeated index
    ragged = _batches(dataset_size=10, batch_size=3, num_batches=6, seed=0)
    for e in range(2):
        ids = [i for batch in ragged[e * 3 : (e + 1) * 3] for i, _ in batch]
        assert len(set(ids)) == 9 and set(ids) <= set(range(10))


def test_sampler_ranks_split_the_global_batch():
    common = {"dataset_size": 17, "num_batches": 9, "seed": 3}
    single = _batches(batch_size=4, **common)
    rank0 = _batches(batch_size=2, rank=0, world_size=2, **common)
    rank1 = _batches(batch_size=2, rank=1, world_size=2, **common)
    for b, (g, r0, r1) in enumerate(zip(single, rank0, rank1, strict=True)):
        assert len(r0) == len(r1) == 2
        assert not {i for i, _ in r0} & {i for i, _ in r1}, b
        assert r0 + r1 == g, b  # same indices and the same per-sample seeds
    resumed = _batches(batch_size=2, rank=1, world_size=2, start=5, **common)
    assert resumed == rank1[5:]


def test_sampler_rejects_dataset_smaller_than_global_batch():
    with pytest.raises(ValueError, match="3 images"):
        IterationBatchSampler(dataset_size=3, batch_size=2, num_batches=1, world_size=2)
    IterationBatchSampler(dataset_size=4, batch_size=2, num_batches=1, world_size=2)
