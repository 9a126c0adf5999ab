"""Exceptions a user can act on. The CLI prints their message in one line; the library never exits."""


class MmfuseError(Exception):
    """Base class: the message names the file, row or guid and says what to do."""


class DataError(MmfuseError):
    """A data set file is missing, unreadable or inconsistent."""


class BackboneError(MmfuseError):
    """A text or image model (or its weights) could not be loaded."""


class CacheError(MmfuseError):
    """A feature cache is missing, incomplete or was built with another configuration."""


class InputError(MmfuseError, ValueError):
    """Arrays given to an estimator have the wrong shape, values or labels (a ValueError, as in scikit-learn)."""
