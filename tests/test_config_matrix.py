"""Every ``model=`` preset with every dataset and every command, as users combine them.

The unit tests of each option passed while 7 of 9 presets failed to compose with the
default config; so this file runs the commands users type, with group overrides
(``model=``, ``dataset=``) and keys, across the cross product. The compose-only part
is fast; the runs (train 1 iteration, eval, predict, benchmark for every preset on the
synthetic set and on a copy of the real VOC sample) are marked slow and run in CI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from clitools import EXPERIMENTS, MODEL_PRESETS, REPO, VOC_SAMPLE, cli, needs_shared, tree_digest, voc_copy

from deeplab_cli.cli.benchmark import main as benchmark_main
from deeplab_cli.config import checks, datasets, models
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.models.builder import build_model, check_spec
from deeplab_cli.models.importers.base import meta_build

DATASETS = sorted(p.stem for p in (REPO / "configs" / "dataset").glob("*.yaml"))
NUM_CLASSES = {"folder": 2, "cityscapes": 19, "cityscapes_trainids": 19, "ade20k": 150, "camvid": 11}
COMMANDS = ["train", "eval", "predict", "export"]
needs_voc = needs_shared(VOC_SAMPLE)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_every_preset_composes_with_every_dataset_and_command(preset: str, dataset: str, command: str) -> None:
    extra = ["checkpoint=x"] + (["input=x"] if command == "predict" else []) if command != "train" else []
    cfg = compose_train([f"model={preset}", f"dataset={dataset}", *extra], config_name=command)
    if command == "train":
        checks.validate(cfg)
    else:  # the network and data nodes that override a checkpoint's (eval configs have no training keys)
        check_spec(models.model_spec(cfg))
        datasets.validate_dataset(cfg)
        assert "optim" not in cfg and "loss" not in cfg and set(cfg.trainer) == {"device", "precision", "channels_last"}
    assert cfg.model.name == preset and cfg.dataset.name == dataset
    assert cfg.model.num_classes == cfg.dataset.num_classes == NUM_CLASSES.get(dataset, 21)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("config_name", ["check_data", "split"])
def test_dataset_tools_compose_with_every_dataset_and_fold_keys(dataset: str, config_name: str) -> None:
    """deeplab-check-data and deeplab-split take the same dataset= presets and dataset.folds/fold keys."""
    from deeplab_cli.config.datasets import dataset_node

    cfg = compose_train([f"dataset={dataset}", "dataset.folds=f", "dataset.fold=1"], config_name=config_name)
    node = dataset_node(cfg)
    assert node.name == dataset and node.fold == 1 and node.num_classes == NUM_CLASSES.get(dataset, 21)
    if config_name == "split":
        assert (cfg.k, cfg.group, cfg.out) == (5, None, None)


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_every_preset_builds_as_composed(preset: str) -> None:
    cfg = compose_train([f"model={preset}"])
    model = meta_build(lambda: build_model(models.model_spec(cfg)))
    assert model.num_classes == 21


BACKBONES = sorted(p.stem for p in (REPO / "configs" / "backbone").glob("*.yaml"))
HEADS = sorted(p.stem for p in (REPO / "configs" / "head").glob("*.yaml"))
#: backbone=timm needs a model name; the imported layouts exist to rebuild other projects' checkpoints.
GROUP_EXTRA = {"timm": ["backbone.model=resnet18"]}


def _yaml(group: str, name: str) -> dict:
    return yaml.safe_load((REPO / "configs" / group / f"{name}.yaml").read_text()) or {}


def test_presets_choose_backbone_and_head_options_and_set_no_keys_of_them() -> None:
    """A key a preset sets under ``backbone``/``head`` breaks ``model=P backbone=B`` for every option lacking it:
    presets pick whole options (``override /backbone: vgg16_v2``) instead; experiments may set only keys that
    every option of the group has (``head.channels``)."""
    for preset in MODEL_PRESETS:
        assert not {"backbone", "head"} & set(_yaml("model", preset)), preset
    shared = {
        group: set.intersection(*(set(compose_train([f"{group}={o}", *GROUP_EXTRA.get(o, [])])[group]) for o in opts))
        for group, opts in (("backbone", BACKBONES), ("head", HEADS))
    }
    for experiment in EXPERIMENTS:
        for group, keys in shared.items():
            assert set(_yaml("experiment", experiment).get(group) or {}) <= keys, (experiment, group)


@pytest.mark.parametrize("option", [f"backbone={b}" for b in BACKBONES] + [f"head={h}" for h in HEADS])
def test_every_backbone_and_head_option_composes_with_the_default_model(option: str) -> None:
    extra = GROUP_EXTRA.get(option.split("=")[1], [])
    cfg = compose_train([option, *extra])
    assert cfg.model.name == "quickstart"
    group, name = option.split("=")
    assert dict(cfg[group]) == dict(compose_train(["model=deeplabv3plus_resnet101", option, *extra])[group])


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_every_preset_composes_with_a_timm_backbone_and_another_head(preset: str) -> None:
    cfg = compose_train([f"model={preset}", "backbone=timm", "backbone.model=resnet18", "head=aspp_v3"])
    checks.validate(cfg)
    assert cfg.model.name == preset and cfg.backbone.model == "resnet18" and cfg.head.name == "aspp_v3"


def test_group_override_builds_what_it_names() -> None:
    """The acceptance command: the default (quick-start) model with a timm backbone and the v3+ head."""
    cfg = compose_train(["backbone=timm", "backbone.model=efficientnet_b0", "head=v3plus"])
    checks.validate(cfg)
    model = meta_build(lambda: build_model(models.model_spec(cfg)))
    assert model.backbone.feature_info["out"].channels == 320 and model.output_stride == 8
    assert cfg.head.channels == 256 and "dilation" not in cfg.head and "width_mult" not in cfg.backbone


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("dataset", ["", "dataset=voc", "dataset=synthetic"])
def test_every_experiment_composes_with_dataset_and_model_overrides(experiment: str, dataset: str) -> None:
    for extra in ([], ["model=deeplabv3plus_mobilenet_v2"], ["model.output_stride=16", "trainer.max_iters=1"]):
        cfg = compose_train([f"experiment={experiment}", *([dataset] if dataset else []), *extra])
        checks.validate(cfg)
        own = _yaml("experiment", experiment)["trainer"]["max_iters"]  # the recipe's, not the default trainer's
        assert cfg.trainer.max_iters == (1 if "trainer.max_iters=1" in extra else own)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "HYDRA_FULL_ERROR" not in stderr and "Traceback" not in stderr and "search path" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("command", "args", "needles"),
    [
        ("deeplab-train", ["backbone=timm", "backbone.model=dpn68", "model.output_stride=8"], ["dpn68", "=32 only"]),
        ("deeplab-train", ["backbone=timm"], ["backbone.model=NAME"]),
        ("deeplab-train", ["model=deeplabv4"], ["model/deeplabv4", "deeplabv3plus_resnet101", "quickstart"]),
        ("deeplab-train", ["dataset.mean=[0.5,0.5,0.5]"], ["dataset.mean", "model.preprocess.mean"]),
        ("deeplab-train", ["optim.lrr=0.1"], ["optim.lrr"]),
        ("deeplab-eval", [], ["checkpoint", "pass checkpoint="]),
        ("deeplab-predict", ["checkpoint=x"], ["input", "pass input="]),
        ("deeplab-eval", ["checkpoint=x", "optim.lr=0.1"], ["optim.lr", "training setting", "checkpoint's"]),
        ("deeplab-predict", ["checkpoint=x", "input=x", "trainer.max_iters=3"], ["trainer.max_iters", "training"]),
        ("deeplab-export", ["checkpoint=x", "resume=true"], ["resume", "training setting"]),
        ("deeplab-check-data", ["dataset=nope"], ["dataset/nope", "voc"]),
    ],
)
def test_impossible_combinations_fail_in_one_line(tmp_path: Path, command: str, args: list[str], needles) -> None:
    proc = cli(command, f"hydra.run.dir={tmp_path / 'run'}", *args, cwd=tmp_path)
    assert proc.returncode == 1
    line = _one_line(proc.stderr)
    assert line.startswith("Error: ")
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "data").exists(), "nothing is generated before the config is valid"


def _jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


#: one preset per backbone family, plus MSC and attention: trained on the real VOC copy (all run on synthetic data)
VOC_PRESETS = sorted(["quickstart", "deeplabv2_resnet101_msc", "attention_to_scale_vgg16", "deeplabv3plus_mobilenet_v2",
                      "deeplabv3plus_xception65", "deeplabv3plus_efficientnet_b0"])  # fmt: skip


def _train_every_preset(cwd: Path, sweep: Path, *extra: str, presets: list[str] = MODEL_PRESETS) -> dict[str, Path]:
    """``deeplab-train -m model=<every preset> model.pretrained=false trainer.max_iters=1 ...``: preset -> last.pt."""
    proc = cli(
        "deeplab-train", "-m", f"model={','.join(presets)}", "model.pretrained=false", "trainer.max_iters=1",
        f"hydra.sweep.dir={sweep}", "trainer.progress=false", *extra, cwd=cwd, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    jobs = _jobs(sweep)
    assert len(jobs) == len(presets)
    found = {}
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["iteration"] == 1 and 0 <= metrics["mIoU"] <= 100
        preset = (job / ".hydra" / "overrides.yaml").read_text().split("model=")[1].split()[0]
        found[preset] = job / "checkpoints" / "last.pt"
    assert sorted(found) == sorted(presets)
    summary = json.loads((sweep / "summary.json").read_text())["jobs"]
    assert len(summary) == len(presets) and all(job["mIoU"] is not None for job in summary)
    return found


def _eval_and_predict(cwd: Path, checkpoints: dict[str, Path], images: Path, *extra: str) -> None:
    listed = ",".join(str(checkpoints[p]) for p in sorted(checkpoints))
    proc = cli(
        "deeplab-eval", "-m", f"checkpoint={listed}", f"hydra.sweep.dir={cwd / 'eval'}", "eval.progress=false",
        "eval.num_workers=0", *extra, cwd=cwd, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    for job in _jobs(cwd / "eval"):
        assert json.loads((job / "metrics.json").read_text())["num_images"] >= 1
    proc = cli(
        "deeplab-predict", "-m", f"checkpoint={listed}", f"input={images}", f"hydra.sweep.dir={cwd / 'predict'}",
        "eval.progress=false", "eval.num_workers=0", cwd=cwd, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    wanted = sorted(p.stem for p in images.glob("*.jpg"))
    for job in _jobs(cwd / "predict"):
        written = sorted(p.stem for p in (job / "predictions").glob("*.png"))
        assert written == wanted, job


@pytest.mark.slow
def test_every_preset_trains_evaluates_and_predicts_on_the_default_dataset(tmp_path: Path) -> None:
    """The README's command for every preset, from an empty folder: the synthetic set is generated there."""
    checkpoints = _train_every_preset(tmp_path, tmp_path / "train", "trainer.batch_size=4", "dataset.subset=4")
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((tmp_path / "data" / "synthetic" / "VOC2012" / "JPEGImages").glob("*val_0000[01].jpg")):
        (images / path.name).write_bytes(path.read_bytes())
    _eval_and_predict(tmp_path, checkpoints, images, "dataset.subset=2")


@pytest.mark.slow
@needs_voc
def test_every_preset_trains_evaluates_and_predicts_on_voc_without_touching_it(tmp_path: Path) -> None:
    """One preset per backbone family on a copy of the real VOC sample; the copy stays byte-identical."""
    root = voc_copy(tmp_path / "voc")
    before = tree_digest(root)
    small = ["dataset.crop_size=65", "trainer.batch_size=2", "dataset.subset=1", "dataset.num_workers=0",
             "dataset.allow_absent_classes=true"]  # fmt: skip  (4 training images: 8 of the 21 classes)
    checkpoints = _train_every_preset(
        tmp_path, tmp_path / "train", "dataset=voc", f"dataset.root={root}", *small, presets=VOC_PRESETS
    )
    images = tmp_path / "images"
    images.mkdir()
    jpegs = root / "VOCdevkit" / "VOC2012" / "JPEGImages"
    (images / "2007_000033.jpg").write_bytes((jpegs / "2007_000033.jpg").read_bytes())
    _eval_and_predict(tmp_path, checkpoints, images, "dataset=voc", f"dataset.root={root}", "dataset.subset=1")
    assert tree_digest(root) == before, "a command wrote under dataset.root"


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_benchmark_runs_every_preset(tmp_path: Path, preset: str) -> None:
    out = tmp_path / "bench.json"
    args = [f"model={preset}", "crop=33", "batch=2", "warmup=0", "iters=1", "infer_iters=1", "infer_size=40x32"]
    assert benchmark_main([*args, "reference=none", "data=false", "threads=1", f"out={out}"]) == 0
    record = json.loads(out.read_text())
    assert record["ours_train_images_per_s"] > 0 and record["ours_params"] > 0
