"""Where the ``configs/`` tree lives: inside the wheel, or at the top of a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def config_dir() -> Path:
    """``deeplab_cli/configs`` in an installed wheel, else ``<checkout>/configs``.

    An absolute path keeps Hydra independent of the working directory and of how
    the package was installed (checkout, editable, wheel).
    """
    for candidate in (_PACKAGE / "configs", _PACKAGE.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"deeplab-cli configs not found next to {_PACKAGE}; reinstall the package")
