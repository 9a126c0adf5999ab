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


def write_failed(path, error: OSError, kept: str) -> MmfuseError:
    """The error for a failed write (a full disk above all): names the file, says what was kept and that
    re-running the same command resumes."""
    import errno

    full = getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error)
    reason = "no space left on the device" if full else str(error).splitlines()[0][:200]
    return MmfuseError(f"cannot write {path}: {reason}. {kept}; free some space (or fix the disk) and re-run the "
                       "same command to resume.")
