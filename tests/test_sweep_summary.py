"""The multirun summary: jobs ranked by mIoU, with only the swept overrides shown."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from deeplab_cli.tools.sweep import write_summary


def _job(sweep: Path, num: int, overrides: list[str], miou: float, network: float | None = None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    metrics = {"mIoU": miou, **({"mIoU_network": network} if network is not None else {})}
    (job / "metrics.json").write_text(json.dumps(metrics))


def test_jobs_ranked_best_first_with_their_setting(tmp_path: Path) -> None:
    common = ["checkpoint=c.pt", "crf=deeplabv2_resnet101"]
    _job(tmp_path, 0, [*common, "crf.bi_w=3"], 61.5, 60.0)
    _job(tmp_path, 1, [*common, "crf.bi_w=4"], 63.25, 60.0)
    _job(tmp_path, 2, [*common, "crf.bi_w=5"], 62.0, 60.0)
    (tmp_path / "3").mkdir()  # a job that failed before writing metrics is left out
    jobs = write_summary(tmp_path)
    assert [j["setting"] for j in jobs] == ["crf.bi_w=4", "crf.bi_w=5", "crf.bi_w=3"]
    assert [j["job"] for j in jobs] == ["1", "2", "0"]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"jobs": jobs, "cross_validation": []}
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert lines[2] == "| rank | setting | mIoU % | network mIoU % | job |"
    assert lines[4] == "| 1 | `crf.bi_w=4` | 63.25 | 60.00 | 1 |"
    assert lines[6] == "| 3 | `crf.bi_w=3` | 61.50 | 60.00 | 0 |"


def test_training_sweep_without_network_column(tmp_path: Path) -> None:
    _job(tmp_path, 0, ["optim.lr=0.01", "trainer.batch_size=8"], 40.0)
    _job(tmp_path, 1, ["optim.lr=0.001", "trainer.batch_size=8"], 55.0)
    write_summary(tmp_path)
    table = (tmp_path / "summary.md").read_text()
    assert "network" not in table and "| 1 | `optim.lr=0.001` | 55.00 | 1 |" in table


def test_empty_sweep_writes_an_empty_table(tmp_path: Path) -> None:
    assert write_summary(tmp_path) == []
    assert "| rank |" in (tmp_path / "summary.md").read_text()


def test_training_sweep_reports_parameters_multiply_adds_and_speed(tmp_path: Path) -> None:
    """Jobs of ``deeplab-train -m`` carry images/s; the summary rebuilds each model (meta device) to count it."""
    from omegaconf import OmegaConf

    from deeplab_cli.cli.summary import main as summary_main
    from deeplab_cli.config.compose import compose as compose_train

    for num, (backbone, miou, speed) in enumerate([("vgg16", 30.0, 12.5), ("efficientnet_b0", 41.0, 20.25)]):
        _job(tmp_path, num, [f"backbone={backbone}", "trainer.max_iters=10"], miou)
        cfg = compose_train([f"backbone={backbone}"])
        OmegaConf.save(cfg, tmp_path / str(num) / ".hydra" / "config.yaml")
        metrics = json.loads((tmp_path / str(num) / "metrics.json").read_text())
        (tmp_path / str(num) / "metrics.json").write_text(json.dumps({**metrics, "train_images_per_s": speed}))
    jobs = write_summary(tmp_path)
    expected = {}
    for backbone in ("vgg16", "efficientnet_b0"):
        out = tmp_path / f"{backbone}.json"
        assert summary_main([f"backbone={backbone}", f"out={out}"]) == 0
        expected[backbone] = json.loads(out.read_text())
    assert [j["setting"] for j in jobs] == ["backbone=efficientnet_b0", "backbone=vgg16"]
    for job in jobs:
        record = expected[job["setting"].split("=")[1]]
        assert job["params"] == record["params"] and job["gmacs"] == record["gmacs"]
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert lines[2] == "| rank | setting | mIoU % | params (M) | Multiply-Adds (G, 513x513) | train images/s | job |"
    b0 = expected["efficientnet_b0"]
    assert (
        lines[4]
        == f"| 1 | `backbone=efficientnet_b0` | 41.00 | {b0['params'] / 1e6:.2f} | {b0['gmacs']:.2f} | 20.25 | 1 |"
    )
