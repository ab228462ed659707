"""A config composed the way the console scripts compose it, for tools and tests that build models
without running a command (``deeplab-summary``, ``deeplab-benchmark``, the test suite).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from .._paths import config_dir
from .schema import register_configs


def compose(overrides: list[str], run_dir: Path | None = None, config_name: str = "train") -> DictConfig:
    """The ``config_name`` command's config (``train``, ``eval``...) with ``overrides``, as its console script
    composes it; with ``run_dir``, also the Hydra runtime (output dir) a command's ``run_*`` function reads."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=run_dir is not None)
    if run_dir is not None:
        OmegaConf.set_readonly(cfg.hydra, False)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg
