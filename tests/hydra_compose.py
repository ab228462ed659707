"""Compose the real configs in-process, as the entry points would (shared by the tests)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from deeplab_cli._paths import config_dir
from deeplab_cli.config import register_configs


def compose_train(overrides: list[str], run_dir: Path | None = None, config_name: str = "train") -> DictConfig:
    """The composed config; with ``run_dir``, also the Hydra runtime that ``run_train`` reads."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=run_dir is not None)
    if run_dir is not None:
        OmegaConf.set_readonly(cfg.hydra, False)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg
