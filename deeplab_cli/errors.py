"""One base class for every error a user can fix; entry points print these without a traceback.

The bottom of the package: it imports nothing of ours (an import-linter contract in
``pyproject.toml`` checks it), so every layer can raise these.
"""


class DeepLabError(Exception):
    """A problem with the user's config, data, weights or checkpoint; the message says how to fix it."""


class ConfigError(DeepLabError, ValueError):
    """A config value or combination of values that cannot work."""


class CheckpointError(DeepLabError):
    """A checkpoint that cannot be read, written or does not fit; the message says why.

    Here, not in ``engine.runtime.checkpoint``, because the importers (a lower layer) raise it too."""


def user_message(exc: BaseException) -> str:
    """The message to print for ``exc``, without the worker traceback a DataLoader wraps around it.

    An error raised in a DataLoader worker comes back as the same class whose message is
    "Caught X in DataLoader worker process N. Original Traceback ..."; its last line holds
    the original one-paragraph message. (Config errors are worded by ``entry.message_of``.)
    """
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    name = type(exc).__name__
    marker = f"{name}: "
    message = last.split(marker, 1)[1] if marker in last else last
    where = text.split("\n", 1)[0].removeprefix(f"Caught {name} ").rstrip(".")
    return f"{message} ({where})"
