"""A head is one module plus one YAML (docs/contributing.md), and the builder has no list of names.

The toy head below is defined and registered in this file alone; its YAML is written to a
folder that ``hydra.searchpath`` adds. It is then trained and evaluated through the
console commands (``deeplab-train``, ``deeplab-eval``, in-process), and the evaluated
checkpoint is checked to hold the toy head with the parameters a hand count gives.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from omegaconf import MISSING
from torch import Tensor, nn

from deeplab_cli.cli import evaluate as eval_cli
from deeplab_cli.cli import train as train_cli
from deeplab_cli.engine.runtime.checkpoint import load_checkpoint
from deeplab_cli.models import registry
from deeplab_cli.models.backbones.base import Backbone, FeatureInfo
from deeplab_cli.models.builder import ModelSpec, build_model, check_spec
from deeplab_cli.models.heads.base import Head
from deeplab_cli.models.registry import HeadInputs, ModelConfigError, register_backbone, register_head

REPO = Path(__file__).resolve().parents[1]
QUIET = ["hydra/job_logging=none", "hydra/hydra_logging=none"]  # leave pytest's logging alone
TINY = [
    "backbone.width_mult=0.125", "trainer.max_iters=2", "trainer.val_interval=2", "trainer.batch_size=2",
    "trainer.progress=false", "dataset.num_workers=0", "dataset.synthetic.num_train=4", "dataset.synthetic.num_val=2",
]  # fmt: skip
TOY_WIDTH = 5


@dataclass
class ToyHeadConfig:
    """``head=toy``: the width lives in the YAML."""

    name: str = "toy"
    width: int = MISSING


class ToyHead(Head):
    """1x1 conv to ``width`` channels, ReLU, 1x1 conv to the classes."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, width, 1)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        return self.classifier(torch.relu(self.reduce(feats["out"])))


def build_toy(inputs: HeadInputs, **args: int) -> ToyHead:
    return ToyHead(inputs.channels(), inputs.num_classes, **args)


@pytest.fixture
def toy_head() -> Iterator[None]:
    """Registered for this test only, so that other tests see the built-in heads alone."""
    register_head("toy", schema=ToyHeadConfig)(build_toy)
    yield
    registry.HEADS.pop("toy")


def _run(monkeypatch: pytest.MonkeyPatch, main, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", argv)
    try:
        main()
    except SystemExit as exc:  # Hydra's main returns; an error exits with its one-line message
        assert not exc.code, f"{argv[0]} exited with {exc.code}"


def test_a_toy_head_trains_and_evaluates_through_the_cli(toy_head, tmp_path: Path, monkeypatch, capsys) -> None:
    search = tmp_path / "configs"
    (search / "head").mkdir(parents=True)
    (search / "head" / "toy.yaml").write_text(f"defaults:\n  - toy_schema\n  - _self_\n\nwidth: {TOY_WIDTH}\n")
    common = [f"hydra.searchpath=[file://{search}]", *QUIET]
    data = f"dataset.root={tmp_path / 'data'}"
    _run(monkeypatch, train_cli.main, ["deeplab-train", f"hydra.run.dir={tmp_path / 'train'}", "head=toy", data,
                                       *TINY, *common])  # fmt: skip
    ckpt = tmp_path / "train" / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    assert state["config"]["head"] == {"name": "toy", "width": TOY_WIDTH}
    trained = json.loads((tmp_path / "train" / "metrics.json").read_text())

    evaluation = ["eval.num_workers=0", "eval.progress=false", "eval.plots=false"]
    _run(monkeypatch, eval_cli.main, ["deeplab-eval", f"hydra.run.dir={tmp_path / 'eval'}", f"checkpoint={ckpt}",
                                      *evaluation, *common])  # fmt: skip
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # the same weights on the same validation images: the training run's last validation, to the digit
    assert evaluated["mIoU"] == pytest.approx(trained["mIoU"], abs=1e-9)

    head_keys = {k: v for k, v in state["model"].items() if k.startswith("head.")}
    in_channels = head_keys["head.reduce.weight"].shape[1]
    classes = 21  # the synthetic set's VOC classes
    by_hand = in_channels * TOY_WIDTH + TOY_WIDTH + TOY_WIDTH * classes + classes
    assert sum(v.numel() for v in head_keys.values()) == by_hand
    assert set(head_keys) == {
        "head.reduce.weight",
        "head.reduce.bias",
        "head.classifier.weight",
        "head.classifier.bias",
    }


def test_every_builtin_option_has_a_yaml_and_every_yaml_a_registered_option() -> None:
    """The registry and ``configs/`` agree: an option registered without a YAML (or the reverse) is unusable."""
    for group, entries in (("backbone", registry.backbones()), ("head", registry.heads())):
        named = set()
        for path in (REPO / "configs" / group).glob("*.yaml"):
            text = path.read_text()
            schema = next(
                line.split("-", 1)[1].strip() for line in text.splitlines() if line.strip().endswith("_schema")
            )
            named.add(schema.removesuffix("_schema"))
        # backbones used only by imported checkpoints may have no preset (resnet50_caffe)
        assert named <= set(entries), f"configs/{group} names unregistered options: {named - set(entries)}"
        if group == "head":
            assert named == set(entries)


class StrideEightOnly(Backbone):
    """A backbone with one feature map (stride 8): no ``low_level``."""

    def __init__(self, output_stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=8, padding=1)
        self.feature_info = {"out": FeatureInfo(4, 8)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.conv(x)}


def test_the_v3plus_decoder_declares_its_stride_4_input() -> None:
    """What a head needs comes from its registration: v3+ on a backbone without a stride-4 map fails by name,
    while a head that needs only ``out`` builds on it."""
    assert registry.head("v3plus").needs == ("out", "low_level")
    register_backbone("stride_eight_only")(StrideEightOnly)
    try:
        with pytest.raises(ModelConfigError, match=r"head=v3plus needs low-level \(stride 4\) features, which "
                           r"backbone=stride_eight_only lacks"):  # fmt: skip
            build_model(ModelSpec("stride_eight_only", "v3plus", 3, 8, {}, {"rates": [6, 12, 18]}))
        model = build_model(ModelSpec("stride_eight_only", "aspp_v3", 3, 8, {}, {"rates": [6, 12, 18]}))
        assert model(torch.zeros(2, 3, 32, 32))["out"].shape == (2, 3, 4, 4)  # logits at the output stride
    finally:
        registry.BACKBONES.pop("stride_eight_only")


def test_unknown_names_list_the_registered_options() -> None:
    with pytest.raises(ModelConfigError, match="head='nope' is unknown; choose one of aspp_v2, aspp_v3, largefov"):
        check_spec(ModelSpec("vgg16", "nope", 3))


def test_a_second_registration_of_a_name_from_another_module_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_head("largefov")(build_toy)


def test_a_plugin_package_registers_through_its_entry_point(tmp_path: Path, monkeypatch) -> None:
    """A head kept in the user's own package: named under the ``deeplab_cli.plugins`` entry-point group, it is
    imported on the first lookup (so a subprocess, a ``torchrun`` worker or a sweep job sees it too)."""
    from importlib.metadata import EntryPoint

    (tmp_path / "my_heads.py").write_text(
        "from deeplab_cli.models.registry import register_head\n"
        "from tests_toy_builder import build\n"
        "register_head('plugin_toy')(build)\n"
    )
    (tmp_path / "tests_toy_builder.py").write_text("def build(inputs, **args):\n    raise NotImplementedError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = EntryPoint("mine", "my_heads", registry.PLUGIN_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [plugin] if group == registry.PLUGIN_GROUP else [])
    monkeypatch.setattr(registry, "_loaded", False)
    try:
        assert registry.head("plugin_toy").build.__module__ == "tests_toy_builder"
    finally:
        registry.HEADS.pop("plugin_toy", None)


def test_a_broken_plugin_is_one_error_naming_it(monkeypatch) -> None:
    """A plugin whose import fails stops the lookup with the entry point and the cause, not a bare traceback."""
    from importlib.metadata import EntryPoint

    plugin = EntryPoint("broken", "no_such_module_for_deeplab", registry.PLUGIN_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [plugin] if group == registry.PLUGIN_GROUP else [])
    monkeypatch.setattr(registry, "_loaded", False)
    with pytest.raises(ModelConfigError) as info:
        registry.head("largefov")
    message = str(info.value)
    assert "'broken'" in message and "no_such_module_for_deeplab" in message and "ModuleNotFoundError" in message
    assert "uninstall the package" in message
