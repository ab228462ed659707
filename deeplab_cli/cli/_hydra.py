"""Console-script wrapper: a config that cannot be composed is reported in one line, not a Hydra trace.

Hydra prints composition errors over several lines (the failing file, the key, the
schema, "Set the environment variable HYDRA_FULL_ERROR=1 ..."). Users type
``deeplab-train model=X backbone=Y``; what they need is which option or key is wrong
and what to do. Setting ``HYDRA_FULL_ERROR=1`` yourself keeps Hydra's full report.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import fields

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from ..config.schema import MOVED_TO_PREPROCESS, EvalConfig, TrainConfig, TrainerConfig, register_configs
from ..errors import DeepLabError, user_message

_FULL_ERROR = "HYDRA_FULL_ERROR"
_DROPPED = (
    "To append to your config use", "object_type=", "full_key:", "reference_type=", "Set the environment variable",
)  # fmt: skip


def _options(lines: list[str]) -> list[str]:
    """Hydra's ``Available options in 'model':`` block folded into one clause."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("Available options in"):
            choices = []
            while i + 1 < len(lines) and re.fullmatch(r"[\w.\-]+", lines[i + 1]):
                i += 1
                choices.append(lines[i])
            line = f"{line.rstrip(':')}: {', '.join(choices)}"
        out.append(line)
        i += 1
    return out


_TEST_TIME_SCHEMAS = ("EvalConfig", "PredictConfig", "ExportConfig", "RuntimeConfig")


def _is_training_key(full_key: str) -> bool:
    """A key of ``deeplab-train``'s config that the test-time commands do not have (``optim.lr``, ``resume``,
    ``trainer.max_iters``)."""
    node, _, leaf = full_key.partition(".")
    training_only = {f.name for f in fields(TrainConfig)} - {f.name for f in fields(EvalConfig)}
    return node in training_only or (node == "trainer" and leaf in {f.name for f in fields(TrainerConfig)})


def _hint(text: str) -> str:
    """What to do, for the errors users meet most."""
    key = re.search(r"full_key: (\S+)", text)
    full_key = key.group(1) if key else ""
    node, _, leaf = full_key.partition(".")
    if node == "dataset" and leaf in MOVED_TO_PREPROCESS:
        return (
            f"input normalisation belongs to the weights and moved to model.preprocess: use "
            f"model.preprocess.{leaf}=... (it is stored in checkpoints; a dataset= override never changes it)"
        )
    schema = re.search(r"not in '(\w+)'", text)
    if schema and schema.group(1) in _TEST_TIME_SCHEMAS and _is_training_key(full_key):
        return (
            f"{full_key} is a training setting; deeplab-eval, deeplab-predict and deeplab-export use the "
            "checkpoint's. Of the trainer keys only trainer.device, trainer.precision and trainer.channels_last "
            "apply at test time"
        )
    if full_key and "not in '" in text:
        return (
            f"{full_key} is not a setting of the selected {node or 'config'} option; check the spelling, or choose "
            "options that go together (README: Configuration lists the keys of each group)"
        )
    missing = re.search(r"Missing mandatory value: (\S+)", text)
    if missing:
        return f"pass {missing.group(1)}=..."
    if "Could not find" in text or "Could not load" in text:
        return "pick one of the available options (README: Configuration)"
    return ""


def one_line(exc: BaseException) -> str:
    """A Hydra/OmegaConf error as one line: what failed, where, and the fix."""
    text = str(exc)
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause) not in text:
        text = f"{text}\n{cause}"
    text_before_search_path = text.split("Config search path:")[0]  # Hydra's list of config folders
    lines = [line.strip() for line in text_before_search_path.splitlines() if line.strip()]
    lines = _options([line for line in lines if not line.startswith(_DROPPED)])
    message = " ".join(line if line.endswith((".", ":")) else f"{line}." for line in lines)
    hint = _hint(text)
    if not hint:
        return message
    return f"{message} Fix: {hint}" + ("" if hint.endswith(".") else ".")


def message_of(exc: BaseException) -> str:
    """The one line to print for an error of a command: a config value it could not read (``???`` left unset)
    as :func:`one_line`, anything else as :func:`errors.user_message`."""
    if isinstance(exc, OmegaConfBaseException):
        return one_line(exc)
    return user_message(exc)


def run(hydra_main: Callable[[], object]) -> None:
    """Call a ``@hydra.main`` function; composition and config-value errors exit 1 with :func:`one_line`."""
    keep_trace = os.environ.get(_FULL_ERROR) == "1"
    os.environ[_FULL_ERROR] = "1"  # Hydra then raises instead of printing its own report
    try:
        register_configs()  # at call time: options registered after import (plugins, tests) are included
        hydra_main()
    except (HydraException, OmegaConfBaseException) as exc:
        if keep_trace:
            raise
        print(f"Error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if not keep_trace:
            os.environ.pop(_FULL_ERROR, None)


@contextlib.contextmanager
def user_errors(prefix: str = "") -> Iterator[None]:
    """Inside a ``@hydra.main`` body: our errors and bad config values print one line and exit 1.

    ``prefix`` names the process under torchrun (``[rank 1] ``), where every rank reports its own error.
    """
    try:
        yield
    except (DeepLabError, OmegaConfBaseException) as exc:
        print(f"{prefix}Error: {message_of(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
