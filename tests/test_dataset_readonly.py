"""Nothing writes into a dataset: the synthetic generator only writes a folder it created, and no
command (but the prepare commands) creates, changes or deletes a file under ``dataset.root``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from clitools import VOC_SAMPLE, cli, needs_shared, require_shared, tree_digest, voc_copy

from deeplab_cli.data.synthetic import MARKER, SyntheticRootError, SyntheticSpec, ensure_synthetic_voc

SPEC = SyntheticSpec(num_train=3, num_val=2)
TINY_TRAIN = [
    "dataset.crop_size=65", "trainer.batch_size=2", "trainer.max_iters=1", "trainer.progress=false",
    "dataset.num_workers=0", "dataset.subset=1", "backbone.width_mult=0.125", "head.channels=16",
    "dataset.allow_absent_classes=true",  # the 4 training images of the VOC sample hold 8 of the 21 classes
]  # fmt: skip
HAS_CRF = importlib.util.find_spec("pydensecrf") is not None


def test_generator_writes_a_new_or_empty_folder_and_reuses_its_own(tmp_path: Path) -> None:
    voc = ensure_synthetic_voc(tmp_path / "new", SPEC)
    assert voc == tmp_path / "new" / "VOC2012" and json.loads((voc / MARKER).read_text())["num_train"] == 3
    (tmp_path / "empty").mkdir()
    ensure_synthetic_voc(tmp_path / "empty", SPEC)
    before = tree_digest(tmp_path / "new")
    ensure_synthetic_voc(tmp_path / "new", SPEC)  # the same spec: nothing rewritten
    assert tree_digest(tmp_path / "new") == before
    ensure_synthetic_voc(tmp_path / "new", SyntheticSpec(num_train=4, num_val=2))  # its own folder: regenerated
    assert len((voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()) == 4


def test_an_interrupted_generation_is_finished_next_time(tmp_path: Path) -> None:
    voc = ensure_synthetic_voc(tmp_path, SPEC)
    marker = json.loads((voc / MARKER).read_text())
    (voc / MARKER).write_text(json.dumps({**marker, "complete": False}))  # as left by a Ctrl-C mid-way
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    ensure_synthetic_voc(tmp_path, SPEC)
    assert (voc / "ImageSets" / "Segmentation" / "val.txt").is_file()
    assert "complete" not in json.loads((voc / MARKER).read_text())


@needs_shared(VOC_SAMPLE)
@pytest.mark.parametrize("where", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_generator_refuses_someone_elses_data_and_writes_nothing(tmp_path: Path, where: str) -> None:
    require_shared(VOC_SAMPLE)
    root = voc_copy(tmp_path / "voc")
    before = tree_digest(root)
    with pytest.raises(SyntheticRootError) as info:
        ensure_synthetic_voc(root / where, SPEC)
    message = str(info.value)
    assert f"dataset.root={str(root / where)!r}" in message and "nothing was written" in message
    assert "dataset=voc" in message and "entries (" in message
    assert tree_digest(root) == before


def test_generator_refuses_a_folder_of_photos(tmp_path: Path) -> None:
    (tmp_path / "holiday.jpg").write_bytes(b"not really a jpeg")
    with pytest.raises(SyntheticRootError, match=r"holds 1 entries \(holiday.jpg\)"):
        ensure_synthetic_voc(tmp_path, SPEC)
    assert [p.name for p in tmp_path.iterdir()] == ["holiday.jpg"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, voc_root: Path) -> dict[str, Path]:
    """A quickstart checkpoint trained on the synthetic set and one trained on the VOC copy."""
    cwd = tmp_path_factory.mktemp("runs")
    found = {}
    for name, data in (("synthetic", ["dataset.synthetic.num_train=4", "dataset.synthetic.num_val=2"]),
                       ("voc", ["dataset=voc", f"dataset.root={voc_root}"])):  # fmt: skip
        proc = cli("deeplab-train", f"hydra.run.dir={cwd / name}", *data, *TINY_TRAIN, cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-3000:]
        found[name] = cwd / name / "checkpoints" / "last.pt"
    return found


def _commands(root: Path, ckpt: dict[str, Path], tmp: Path) -> list[tuple[int, list[str]]]:
    """(expected exit status, command) for the override combinations users type against a dataset root."""
    voc = root / "VOCdevkit" / "VOC2012"
    run = f"hydra.run.dir={tmp / 'run'}"
    out = [
        (1, ["deeplab-train", run, f"dataset.root={root}"]),  # the default (synthetic) dataset on real data
        (1, ["deeplab-train", run, f"dataset.root={voc}", *TINY_TRAIN]),
        (0, ["deeplab-train", run, "dataset=voc", f"dataset.root={root}", *TINY_TRAIN]),
        (0, ["deeplab-train", run, "dataset=voc_aug", f"dataset.root={voc}", *TINY_TRAIN, "resume=auto"]),
        (1, ["deeplab-eval", run, f"checkpoint={ckpt['synthetic']}", f"dataset.root={root / 'VOCdevkit'}"]),
        (0, ["deeplab-eval", run, f"checkpoint={ckpt['synthetic']}", "dataset=voc", f"dataset.root={root}",
             "save_predictions=true", "eval.trimap=[2]", "dataset.subset=2"]),
        (0, ["deeplab-eval", run, f"checkpoint={ckpt['voc']}", "save_predictions=true", "eval.flip=true",
             "eval.batch_size=2", "eval.cache=true", f"eval.cache_dir={tmp / 'cache'}", "dataset.subset=2"]),
        (0, ["deeplab-eval", run, f"checkpoint={ckpt['voc']}", "eval.export=voc_test", "eval.split=val"]),
        (0, ["deeplab-predict", run, f"checkpoint={ckpt['voc']}", f"input={voc / 'JPEGImages'}"]),
        (0, ["deeplab-check-data", run, "dataset=voc", f"dataset.root={root}", "dataset.split=[train,val]",
             "dataset.allow_absent_classes=true"]),
        (1, ["deeplab-check-data", run, f"dataset.root={root}"]),
    ]  # fmt: skip
    if HAS_CRF:
        out.append((0, ["deeplab-eval", "-m", f"hydra.sweep.dir={tmp / 'sweep'}", f"checkpoint={ckpt['voc']}",
                        "crf=deeplabv2_resnet101", "crf.bi_w=3,4", "crf.workers=0", "dataset.subset=1",
                        f"eval.cache_dir={tmp / 'cache'}"]))  # fmt: skip
    return out


@pytest.mark.slow
def test_no_command_writes_under_a_dataset_root(voc_root: Path, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    before = tree_digest(voc_root)
    for i, (status, (command, *args)) in enumerate(_commands(voc_root, checkpoints, tmp_path)):
        proc = cli(command, *args, cwd=tmp_path)
        assert proc.returncode == status, f"{command} {' '.join(args)}\n{proc.stderr[-3000:]}"
        if status == 1:
            assert "not a folder the synthetic-data generator created" in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr
        assert tree_digest(voc_root) == before, f"command {i} wrote under dataset.root: {command} {args}"
    assert not (tmp_path / "data").exists()
