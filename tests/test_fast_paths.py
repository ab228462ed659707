"""Each fast path (precision, channels-last, compile, optimizer kernels) trains like the plain fp32 path."""

from __future__ import annotations

import copy

import pytest
import torch

from deeplab_cli.config import checks, models
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.engine.eval.pipeline import EvalSettings, run_evaluation
from deeplab_cli.engine.runtime.precision import grad_scaler, to_memory_format
from deeplab_cli.engine.train.loop import StepSettings, train_step
from deeplab_cli.engine.train.optim import build_optimizer, param_groups, poly_scheduler
from deeplab_cli.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def _model() -> torch.nn.Module:
    cfg = compose_train(["backbone.width_mult=0.125", "head.channels=16"])  # the quickstart LargeFOV, narrowed
    torch.manual_seed(0)
    return models.make_model(cfg, pretrained=False)


def _batches(n: int = 3) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    return [
        [(torch.randn(2, 3, 40, 40, generator=g), torch.randint(0, 21, (2, 40, 40), generator=g))] for _ in range(n)
    ]


def _losses(model, impl: str = "auto", **step_kwargs) -> tuple[list[float], torch.nn.Module]:
    groups = param_groups(model, 0.01, 5e-4, 10.0, 2.0, False)
    optimizer = build_optimizer("sgd", groups, 0.01, 0.9, False, impl)
    scheduler = poly_scheduler(optimizer, 10)
    scaler = step_kwargs.pop("scaler", None)
    settings = StepSettings("nearest", **step_kwargs)
    losses = [train_step(model, b, optimizer, scheduler, CPU, settings, scaler=scaler).loss for b in _batches()]
    return losses, model


@pytest.fixture(scope="module")
def plain() -> tuple[list[float], torch.nn.Module]:
    return _losses(_model())


@pytest.mark.parametrize(
    "name, impl, kwargs, rtol",
    [
        ("foreach SGD", "foreach", {}, 1e-5),
        ("fused SGD", "fused", {}, 1e-5),
        ("for-loop SGD", "for_loop", {}, 1e-5),
        ("channels-last", "auto", {"channels_last": True}, 1e-4),
        ("bf16 autocast", "auto", {"precision": "bf16"}, 3e-2),
        ("fp16 autocast + GradScaler", "auto", {"precision": "fp16", "scaler": grad_scaler(CPU, "fp16")}, 3e-2),
    ],
)
def test_fast_path_gives_the_plain_loss(plain, name: str, impl: str, kwargs: dict, rtol: float) -> None:
    model = _model()
    if kwargs.get("channels_last"):
        model = to_memory_format(model, True)
    losses, _ = _losses(model, impl, **kwargs)
    assert losses == pytest.approx(plain[0], rel=rtol), name
    assert losses[-1] < losses[0] or rtol > 1e-3  # it trains


@pytest.mark.slow
def test_torch_compile_gives_the_plain_loss(plain) -> None:
    eager = _model()
    losses, _ = _losses(torch.compile(eager))
    assert losses == pytest.approx(plain[0], rel=1e-4)
    # the compiled module shares the eager one's parameters: checkpoints hold the trained weights
    reference, init = plain[1].state_dict(), _model().state_dict()
    moved = (eager.state_dict()["head.fc8.weight"] - init["head.fc8.weight"]).abs().max()
    assert moved > 1e-2
    for key, value in eager.state_dict().items():  # fused kernels round differently: close, not equal
        torch.testing.assert_close(value, reference[key], rtol=1e-2, atol=2e-3, msg=key)


def test_bf16_channels_last_evaluation_matches_fp32(tmp_path) -> None:
    from deeplab_cli.data.synthetic import SyntheticSpec, ensure_synthetic_voc
    from deeplab_cli.data.transforms import eval_transforms
    from deeplab_cli.data.voc import voc_dataset

    ensure_synthetic_voc(tmp_path, SyntheticSpec(num_train=1, num_val=3))
    dataset = voc_dataset(tmp_path, "val", transforms=eval_transforms())
    _, model = _losses(_model())
    preds: dict[str, dict[int, torch.Tensor]] = {"fp32": {}, "fast": {}}
    run_evaluation(model, dataset, CPU, EvalSettings(21), on_prediction=lambda i, p, t, s: preds["fp32"].update({i: p}))
    fast_model = to_memory_format(copy.deepcopy(model), True)
    settings = EvalSettings(21, precision="bf16", channels_last=True)
    run_evaluation(fast_model, dataset, CPU, settings, on_prediction=lambda i, p, t, s: preds["fast"].update({i: p}))
    changed = sum(int((preds["fast"][i] != preds["fp32"][i]).sum()) for i in preds["fp32"])
    total = sum(p.numel() for p in preds["fp32"].values())
    assert sorted(preds["fast"]) == sorted(preds["fp32"]) == [0, 1, 2]
    assert changed / total < 0.02, f"bf16 + channels-last changed {changed / total:.1%} of the predicted pixels"


@pytest.mark.parametrize(
    "override, key", [("trainer.precision=fp8", "trainer.precision"), ("optim.impl=cuda", "optim.impl")]
)
def test_bad_fast_path_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        checks.validate(compose_train([override]))


def test_training_run_with_fast_paths_saves_and_resumes(tmp_path) -> None:
    from deeplab_cli.cli import train as train_mod
    from deeplab_cli.engine.runtime.checkpoint import load_checkpoint

    overrides = [
        f"dataset.root={tmp_path / 'data'}",
        "dataset.synthetic.num_train=4",
        "dataset.synthetic.num_val=2",
        "dataset.num_workers=0",
        "backbone.width_mult=0.125",
        "head.channels=16",
        "trainer.batch_size=2",
        "trainer.max_iters=3",
        "trainer.val_interval=3",
        "trainer.checkpoint_interval=1",
        "trainer.progress=false",
        "trainer.precision=fp16",
        "trainer.channels_last=true",
        "optim.impl=foreach",
    ]
    metrics = train_mod.run_train(compose_train(overrides, tmp_path / "run"))
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert "scale" in state["scaler"] and state["iteration"] == 3 and metrics["num_images"] == 2
    again = train_mod.run_train(compose_train([*overrides, "resume=true"], tmp_path / "run"))
    assert again["mIoU"] == metrics["mIoU"]
