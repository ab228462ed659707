"""One base class for every error a user can fix; entry points print these without a traceback."""


class DeepLabError(Exception):
    """A problem with the user's config, data, weights or checkpoint; the message says how to fix it."""


class ConfigError(DeepLabError, ValueError):
    """A config value or combination of values that cannot work."""
