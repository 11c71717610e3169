"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class PrvrError(Exception):
    """A problem with what the user handed us (file, id, field), not a bug."""


class ConfigError(PrvrError):
    """A config value, file or override that is unknown, of the wrong type or out of range."""


class DataError(PrvrError):
    """A dataset file is missing, malformed or inconsistent."""


class CheckpointError(PrvrError):
    """A checkpoint cannot be read or does not fit the model."""


class OutputError(PrvrError):
    """An output cannot be written: read-only or missing directory, full disk, no permission."""


class NonFiniteError(PrvrError):
    """A NaN or Inf where a number enters: features, weights, a loss or a score."""
