"""k-fold splits for segmentation that keep every fold like the whole set, and groups together.

A random k-fold of segmentation images drifts in class balance: every image holds
several classes, so a fold can end up with few images of a rare class, or with a
different share of the pixels. Frames of one video or slices of one patient that
land in different folds leak. :func:`stratified_folds` balances both figures
practitioners check, over *groups* of images that must stay together:

1. multi-label iterative stratification (Sechidis, Tsoumakas & Vlahavas, "On the
   stratification of multi-label data", ECML PKDD 2011,
   https://doi.org/10.1007/978-3-642-23808-6_41) over class presence, taking the
   rarest class first and groups (largest first) as its units;
2. fold sizes evened out, then a local search (moves of one group, swaps of two)
   that lowers the squared deviations of each fold's per-class image-count share
   and pixel share from the whole set's, never widening the fold-size range.

No config here: the command (``deeplab_cli/cli/split.py``) reads the masks and calls it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .layout import DatasetError


class FoldError(DatasetError):
    """A k-fold request that cannot be met (k, groups, a fold index); the message says how to fix it."""


@dataclass(frozen=True)
class Groups:
    """Which group each image belongs to: ``index[i]`` into ``keys``."""

    keys: list[str]
    index: np.ndarray
    unmatched: int  # images whose id the regex did not match (each is a group of its own)


def group_images(ids: Sequence[str], pattern: str | None) -> Groups:
    """Groups of ``ids`` by ``pattern``: the regex's first capture group if it has one, else the whole match.

    ``re.search`` is used, so ``^[^_]+`` groups CamVid's ``0001TP_006690`` by sequence.
    An id the pattern does not match is a group of its own; a pattern that matches no
    id is an error (it would silently mean "no groups").
    """
    if pattern is None:
        return Groups(list(ids), np.arange(len(ids)), 0)
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise FoldError(f"group={pattern!r} is not a valid regular expression ({exc}); e.g. group='^[^_]+'.") from None
    keys: dict[str, int] = {}
    index = np.empty(len(ids), dtype=np.int64)
    unmatched = 0
    for i, name in enumerate(ids):
        found = regex.search(name)
        if found is None:
            unmatched += 1
            key = f"\0{name}"  # cannot collide with a matched key
        else:
            key = "g:" + (found.group(1) if regex.groups and found.group(1) is not None else found.group(0))
        index[i] = keys.setdefault(key, len(keys))
    if unmatched == len(ids):
        examples = ", ".join(ids[:3])
        raise FoldError(
            f"group={pattern!r} matches none of the {len(ids)} image ids (e.g. {examples}); write a regex that "
            "finds the shared part of an id, e.g. group='^[^_]+' for the text before the first underscore."
        )
    return Groups([k[2:] if k.startswith("g:") else k[1:] for k in keys], index, unmatched)


def check_k(k: int, images: int, groups: int, grouped: bool) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise FoldError(f"k={k!r} must be a whole number of folds, at least 2 (e.g. k=5).")
    if k > images:
        raise FoldError(f"k={k} is larger than the number of images ({images}); choose k <= {images}.")
    if grouped and k > groups:
        raise FoldError(
            f"k={k} is larger than the number of groups ({groups}) the group regex makes; a group is never split, "
            f"so choose k <= {groups} or a finer group= regex."
        )


@dataclass
class _State:
    """Per-group counts and per-fold sums, with the objective the search lowers."""

    sizes: np.ndarray  # (G,) images per group
    present: np.ndarray  # (G, C) images of the group containing each class
    pixels: np.ndarray  # (G, C) pixels of each class
    fold: np.ndarray  # (G,) fold of each group
    k: int

    def __post_init__(self) -> None:
        used = self.present.sum(0) > 0  # classes that never occur have nothing to balance
        self.present, self.pixels = self.present[:, used], self.pixels[:, used]
        self.total = self.sizes.sum()
        self.class_images = self.present.sum(0)
        all_pixels = self.pixels.sum(0)
        self.pixel_share = all_pixels / max(1, all_pixels.sum())
        self.group_pixels = self.pixels.sum(1)
        self.n = np.zeros(self.k)
        self.i = np.zeros((self.k, self.present.shape[1]))
        self.p = np.zeros((self.k, self.pixels.shape[1]))
        np.add.at(self.n, self.fold, self.sizes)
        np.add.at(self.i, self.fold, self.present)
        np.add.at(self.p, self.fold, self.pixels)

    def cost(self, n: np.ndarray, i: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Squared deviations of one fold (rows: candidates) from the whole set; lower is better.

        Image-count share: the fold's share of the images that contain a class, against
        its share of all images. Pixel share: a class's share of the fold's labelled
        pixels, against the whole set's.
        """
        img_dev = i / self.class_images - (n / self.total)[..., None]
        pix_dev = p / np.maximum(p.sum(-1, keepdims=True), 1) - self.pixel_share
        return (img_dev**2).sum(-1) + (pix_dev**2).sum(-1)

    def move(self, g: int | np.ndarray, to: int | np.ndarray) -> None:
        for gg, b in zip(np.atleast_1d(g), np.atleast_1d(to), strict=True):
            a = self.fold[gg]
            self.n[a] -= self.sizes[gg]
            self.i[a] -= self.present[gg]
            self.p[a] -= self.pixels[gg]
            self.n[b] += self.sizes[gg]
            self.i[b] += self.present[gg]
            self.p[b] += self.pixels[gg]
            self.fold[gg] = b


def _iterative_stratification(sizes: np.ndarray, present: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sechidis et al.'s algorithm over groups: the rarest remaining class first, each of its
    groups (largest first) to the fold that still wants that class most, ties to the fold
    with most room left, then at random."""
    G, C = present.shape
    fold = np.full(G, -1)
    room = np.full(k, sizes.sum() / k)
    wanted = np.tile(present.sum(0) / k, (k, 1))
    left = present.astype(np.float64).copy()
    while True:
        remaining = left.sum(0)
        if not (remaining > 0).any():
            break
        rarest = np.flatnonzero(remaining == remaining[remaining > 0].min())
        c = int(rng.choice(rarest))
        members = np.flatnonzero((left[:, c] > 0) & (fold < 0))
        members = members[np.lexsort((rng.random(len(members)), -sizes[members]))]
        for g in members:
            score = np.stack([wanted[:, c], room, rng.random(k)])
            j = int(np.lexsort(score[::-1])[-1])
            fold[g] = j
            wanted[j] -= present[g]
            room[j] -= sizes[g]
            left[g] = 0
    for g in np.flatnonzero(fold < 0)[rng.permutation(int((fold < 0).sum()))]:  # groups with no labelled pixel
        j = int(np.argmax(room + 1e-9 * rng.random(k)))
        fold[g] = j
        room[j] -= sizes[g]
    return fold


def _even_sizes(state: _State) -> None:
    """Move groups from the largest fold to the smallest while that narrows the size range,
    choosing each time the move that disturbs the balance least."""
    while True:
        big, small = int(np.argmax(state.n)), int(np.argmin(state.n))
        gap = state.n[big] - state.n[small]
        candidates = np.flatnonzero((state.fold == big) & (state.sizes < gap))
        if not len(candidates):
            return
        delta = _move_delta(state, candidates, small)
        state.move(int(candidates[np.argmin(delta)]), small)


def _move_delta(state: _State, groups: np.ndarray, to: int) -> np.ndarray:
    a = state.fold[groups]
    n, i, p = state.sizes[groups], state.present[groups], state.pixels[groups]
    before = state.cost(state.n[a], state.i[a], state.p[a]) + state.cost(state.n[to], state.i[to], state.p[to])
    after = state.cost(state.n[a] - n, state.i[a] - i, state.p[a] - p) + state.cost(
        state.n[to] + n, state.i[to] + i, state.p[to] + p
    )
    return after - before


def _best_move(state: _State, lo: float, hi: float) -> tuple[float, int, int]:
    best = (0.0, -1, -1)
    for b in range(state.k):
        groups = np.flatnonzero(state.fold != b)
        a = state.fold[groups]
        ok = (state.n[a] - state.sizes[groups] >= lo) & (state.n[b] + state.sizes[groups] <= hi)
        if not ok.any():
            continue
        groups = groups[ok]
        delta = _move_delta(state, groups, b)
        j = int(np.argmin(delta))
        if delta[j] < best[0]:
            best = (float(delta[j]), int(groups[j]), b)
    return best


def _best_swap(state: _State, picks: np.ndarray, lo: float, hi: float) -> tuple[float, int, int]:
    best = (0.0, -1, -1)
    for g in picks:
        a = state.fold[g]
        others = np.flatnonzero(state.fold != a)
        b = state.fold[others]
        dn = state.sizes[others] - state.sizes[g]
        ok = (state.n[a] + dn >= lo) & (state.n[a] + dn <= hi) & (state.n[b] - dn >= lo) & (state.n[b] - dn <= hi)
        if not ok.any():
            continue
        others, b, dn = others[ok], b[ok], dn[ok]
        di = state.present[others] - state.present[g]
        dp = state.pixels[others] - state.pixels[g]
        before = state.cost(state.n[a], state.i[a], state.p[a]) + state.cost(state.n[b], state.i[b], state.p[b])
        after = state.cost(state.n[a] + dn, state.i[a] + di, state.p[a] + dp) + state.cost(
            state.n[b] - dn, state.i[b] - di, state.p[b] - dp
        )
        delta = after - before
        j = int(np.argmin(delta))
        if delta[j] < best[0]:
            best = (float(delta[j]), int(g), int(others[j]))
    return best


def _refine(
    state: _State, rng: np.random.Generator, max_steps: int, batch: int = 16, patience: int = 3, rel: float = 1e-3
) -> int:
    """Greedy local search: apply the best move or swap while it lowers the objective by more than
    ``rel`` of its value, until that fails ``patience`` times running (swaps are tried for a random
    batch of groups each step). Returns the steps taken."""
    lo = min(state.n.min(), np.floor(state.total / state.k))
    hi = max(state.n.max(), np.ceil(state.total / state.k))
    G = len(state.sizes)
    idle = steps = 0
    while steps < max_steps and idle < patience:
        move = _best_move(state, lo, hi)
        swap = _best_swap(state, rng.choice(G, size=min(batch, G), replace=False), lo, hi)
        tol = -rel * float(state.cost(state.n, state.i, state.p).sum())
        if min(move[0], swap[0]) >= tol:
            idle += 1
            continue
        idle = 0
        steps += 1
        if move[0] <= swap[0]:
            state.move(move[1], move[2])
        else:
            g, h = swap[1], swap[2]
            a, b = state.fold[g], state.fold[h]
            state.move(np.array([g, h]), np.array([b, a]))
    return steps


def _group_sums(groups: Groups, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    G = len(groups.keys)
    sizes = np.bincount(groups.index, minlength=G)
    present = np.zeros((G, pixels.shape[1]))
    summed = np.zeros((G, pixels.shape[1]))
    np.add.at(present, groups.index, (pixels > 0).astype(np.float64))
    np.add.at(summed, groups.index, pixels.astype(np.float64))
    return sizes, present, summed


def stratified_folds(pixels: np.ndarray, groups: Groups, k: int, seed: int = 0, max_steps: int = 4000) -> np.ndarray:
    """The fold (0..k-1) of each image: balanced per-class image counts and pixel shares, groups kept whole.

    ``pixels`` is (images, classes): each image's labelled pixels per class, after label
    mapping (ignored pixels excluded). Deterministic for a given ``seed``.
    """
    check_k(k, len(pixels), len(groups.keys), len(groups.keys) < len(pixels))
    rng = np.random.default_rng(seed)
    sizes, present, summed = _group_sums(groups, pixels)
    state = _State(sizes, present, summed, _iterative_stratification(sizes, present, k, rng), k)
    _even_sizes(state)
    _refine(state, rng, max_steps)
    return state.fold[groups.index]


def random_folds(groups: Groups, k: int, seed: int = 0) -> np.ndarray:
    """The baseline: groups in a random order (``seed``), each to the fold with fewest images so far.

    Without groups this is a shuffled k-fold with folds of equal size (+-1).
    """
    check_k(k, len(groups.index), len(groups.keys), len(groups.keys) < len(groups.index))
    rng = np.random.default_rng(seed)
    sizes = np.bincount(groups.index, minlength=len(groups.keys))
    fold = np.empty(len(sizes), dtype=np.int64)
    count = np.zeros(k)
    for g in rng.permutation(len(sizes)):
        j = int(np.argmin(count + 1e-9 * np.arange(k)))
        fold[g] = j
        count[j] += sizes[g]
    return fold[groups.index]


def fold_balance(pixels: np.ndarray, fold: np.ndarray, k: int, names: Sequence[str]) -> dict[str, object]:
    """Per fold and class: image count, image-count share and pixel share, and the largest deviations.

    ``image_share`` is the fold's share of the images containing the class (ideal: the
    fold's share of all images); ``pixel_share`` is the class's share of the fold's
    labelled pixels (ideal: the whole set's). Deviations are absolute, as fractions.
    """
    present = pixels > 0
    class_images = present.sum(0)
    whole_pixels = pixels.sum(0) / max(1, pixels.sum())
    used = class_images > 0
    folds = []
    worst = {"image_share": 0.0, "pixel_share": 0.0}
    per_class_worst = {n: {"image_share": 0.0, "pixel_share": 0.0} for n in names}
    for j in range(k):
        rows = fold == j
        share_of_all = rows.sum() / len(fold)
        fold_pixels = pixels[rows].sum(0)
        classes = {}
        for c, name in enumerate(names):
            images = int(present[rows, c].sum())
            image_share = images / class_images[c] if used[c] else 0.0
            pixel_share = float(fold_pixels[c] / max(1, fold_pixels.sum()))
            dev_i = abs(image_share - share_of_all) if used[c] else 0.0
            dev_p = abs(pixel_share - whole_pixels[c])
            classes[name] = {"images": images, "image_share": image_share, "pixel_share": pixel_share}
            per_class_worst[name]["image_share"] = max(per_class_worst[name]["image_share"], dev_i)
            per_class_worst[name]["pixel_share"] = max(per_class_worst[name]["pixel_share"], dev_p)
            worst["image_share"] = max(worst["image_share"], dev_i)
            worst["pixel_share"] = max(worst["pixel_share"], dev_p)
        folds.append({"fold": j, "images": int(rows.sum()), "classes": classes})
    return {"folds": folds, "max_deviation": worst, "max_deviation_per_class": per_class_worst}


def check_fold(fold: int, k: int, folds_dir: str) -> None:
    """``dataset.fold`` must name one of the k folds of ``dataset.folds``."""
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < k:
        raise FoldError(
            f"dataset.fold={fold!r} is out of range: {folds_dir} holds k={k} folds, numbered 0..{k - 1}; "
            f"e.g. dataset.fold=0, or sweep them all with deeplab-train -m dataset.fold=range(0,{k})."
        )


FOLDS_FILE = "folds.json"


def read_folds_info(folder: Path) -> dict[str, Any]:
    """The ``folds.json`` deeplab-split wrote into ``folder`` (k, source splits, dataset, balance)."""
    path = folder / FOLDS_FILE
    if not path.is_file():
        state = "does not exist" if not folder.exists() else f"holds no {FOLDS_FILE}"
        raise FoldError(
            f"dataset.folds={str(folder)!r} {state}; set it to the folder deeplab-split wrote "
            f"(deeplab-split dataset=... k=5 out={folder} makes one)."
        )
    try:
        info = json.loads(path.read_text())
        int(info["k"]), list(info["splits"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FoldError(f"{path} is not a deeplab-split report ({exc}); run deeplab-split again.") from None
    return info
