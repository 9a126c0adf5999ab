"""Writing outputs so that nothing a user made is lost or left half-written.

Three rules, for every file and folder mmfuse writes (caches, runs, ensembles, a grid's ``best/``,
reports, inspect folders, demo data):

- **One writer per target.** :class:`TargetLock` holds ``{target}.lock`` (an ``flock``, released by
  the kernel if the writer dies) and writes the holder's pid, host and start time into it; the file
  is removed when the writer is done, so a finished output leaves no sidecar file.
- **Built beside, renamed into place when complete.** :func:`new_folder` and :func:`new_file` hand
  out a hidden sibling (``.{name}.partial-{pid}``); only a complete output is renamed to the target,
  so a kill or an error leaves the target as it was (the old output with ``--overwrite``, or none).
- **Nothing replaced that is not ours, nothing replaced without asking.** An existing target is
  replaced only with ``overwrite``; a folder holding files mmfuse did not make is never replaced.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import json
import os
import shutil
import socket
import time
from pathlib import Path

from .errors import MmfuseError

LOCK_WAIT = 2.0  # seconds a writer waits for a lock: a reader's momentary probe (lock_holder) is not a writer

# marker file -> the kind of folder it makes; the first found names a folder's kind
FOLDER_KINDS = {"finetune.json": "fine-tune run", "ensemble.json": "ensemble", "bagged.json": "grid best/ (fold models)",
                "grid-pick.json": "grid best/", "head.json": "head run", "grid.json": "grid folder",
                "eda.json": "inspect folder", "mmfuse-demo.json": "demo data set"}


class LockedError(MmfuseError):
    """Another process is writing the target."""


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute without resolving links (``--out .`` has a name to put siblings beside)."""
    path = Path(os.path.abspath(path))
    if not path.name:
        raise MmfuseError(f"cannot write to {path}: choose a file or folder inside it")
    return path


def _lock_path(target: Path) -> Path:
    return target.with_name(target.name + ".lock")


class TargetLock:
    """An exclusive lock on ``target`` through ``{target}.lock``; the lock file goes when released.

    Removing a lock file is safe because a locker checks, once it holds the lock, that the file it
    locked is still the one under the name (else it was removed by the previous holder: retry)."""

    def __init__(self, target: str | Path, what: str = "process"):
        self.target, self.what = _absolute(target), what
        self.path, self._fd = _lock_path(self.target), None

    def acquire(self, advice: str = "wait for it to finish or stop it", timeout: float = LOCK_WAIT) -> "TargetLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    holder = lock_holder(self.target) or {"pid": "unknown"}
                    raise LockedError(describe_holder(self.target, holder, self.what) + ": " + advice) from None
                time.sleep(0.05)
                continue
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file after we opened it: lock the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "what": self.what}).encode())
            self._fd = fd
            return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                os.unlink(self.path)  # still holding it: nobody can be inside the lock now
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "TargetLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(target: str | Path) -> dict | None:
    """The process writing ``target`` ({pid, host, started}), or None when nobody is.

    A killed writer's lock is released by the kernel, so it never blocks (nor shows here)."""
    path = _lock_path(Path(target))
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            try:
                return json.loads(os.pread(fd, 4096, 0).decode() or "{}") or {"pid": "unknown"}
            except ValueError:
                return {"pid": "unknown"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe_holder(target: Path, holder: dict, what: str = "process") -> str:
    return (f"{target} is being written by another {what} (pid {holder.get('pid')} on "
            f"{holder.get('host', '?')}, since {holder.get('started', '?')})")


# --- what is there already ----------------------------------------------------------------------------------
def folder_kind(path: Path) -> str | None:
    """What mmfuse made ``path`` as (a run, a grid, ...), from its marker file; None if not mmfuse's."""
    return next((kind for marker, kind in FOLDER_KINDS.items() if (path / marker).is_file()), None)


def check_folder_target(target: Path, kind: str, overwrite: bool, option: str = "--out") -> None:
    """Refuse to replace ``target`` unless it is absent, empty, or (with ``overwrite``) an mmfuse folder."""
    if not os.path.lexists(target):
        return
    if target.is_symlink() or not target.is_dir():
        what = "a symbolic link" if target.is_symlink() else "not a folder"
        raise MmfuseError(f"{target} exists and is {what}: it is not replaced; choose another {option}")
    if not any(target.iterdir()):
        return
    found = folder_kind(target)
    if found is None:
        raise MmfuseError(f"{target} holds files mmfuse did not make: it is never replaced; choose another {option} "
                          "(or empty the folder yourself)")
    if not overwrite:
        other = "" if found == kind else f", not a {kind}"
        raise MmfuseError(f"{target} already holds a {found}{other}: pass --overwrite to replace it (it is kept "
                          f"until the new {kind} is complete), or choose another {option}")


def check_file_target(target: Path, overwrite: bool, option: str = "--out") -> None:
    if not os.path.lexists(target):
        return
    if target.is_symlink() or not target.is_file():
        raise MmfuseError(f"{target} exists and is not a regular file: not replaced; choose another {option}")
    if not overwrite:
        raise MmfuseError(f"{target} exists: pass --overwrite to replace it (it is kept until the new file is "
                          f"complete), or choose another {option}")


# --- renaming into place ------------------------------------------------------------------------------------
def _partials(target: Path, tag: str) -> list[Path]:
    pattern = f".{glob.escape(target.name)}.{tag}-*"  # a name with [ ] * ? matches only itself
    return [p for p in target.parent.glob(pattern) if p.name.rsplit("-", 1)[-1].isdigit()]


def _tidy(target: Path) -> None:
    """Under the lock: remove what a killed writer left beside ``target``, and put back an old output
    that a kill between the two renames of a replacement left aside."""
    for old in _partials(target, "old"):
        if not os.path.lexists(target):
            os.rename(old, target)
        else:
            _remove(old)
    for partial in _partials(target, "partial"):
        _remove(partial)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def swap_into_place(new: Path, target: Path) -> None:
    """Put the complete ``new`` at ``target``; an old ``target`` goes only once ``new`` is in its place."""
    if not os.path.lexists(target) or (target.is_dir() and not target.is_symlink() and not any(target.iterdir())):
        os.replace(new, target)  # rename(2) replaces an empty folder too
    else:
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if _exchange(new, target):  # ``new`` now names the old output: set aside under a name _tidy removes
            os.rename(new, old)
        else:  # two renames; a kill between them leaves the old one at .{name}.old-{pid}, put back by _tidy
            os.rename(target, old)
            try:
                os.rename(new, target)
            except OSError:
                os.rename(old, target)  # the old output back under its name: an error leaves the target as it was
                raise
        _remove(old)
    _fsync_dir(target.parent)


def tidy(target: str | Path) -> None:
    """What a killed writer left beside ``target`` (call it holding ``target``'s lock)."""
    _tidy(_absolute(target))


@contextlib.contextmanager
def new_folder(target: str | Path, kind: str, overwrite: bool = False, what: str | None = None,
               option: str = "--out", check=check_folder_target):
    """Yield an empty hidden sibling of ``target`` to write a ``kind`` folder into; when the block ends
    without an error it replaces ``target`` in one rename, else it is removed and ``target`` is untouched.
    ``check(target, kind, overwrite, option)`` decides, under the lock, whether ``target`` may be replaced
    (default :func:`check_folder_target`).

    >>> with new_folder("runs/concat", "head run", overwrite=False) as tmp:
    ...     head.save(tmp)
    """
    target = _absolute(target)
    lock = TargetLock(target, what or f"mmfuse command writing a {kind}").acquire(
        "wait for it to finish, or choose another " + option)
    try:
        _tidy(target)
        check(target, kind, overwrite, option)  # under the lock: nobody changes the target meanwhile
        tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
        tmp.mkdir(parents=True)
        try:
            yield tmp
            swap_into_place(tmp, target)
        except BaseException:
            _remove(tmp)
            raise
    finally:
        lock.release()


@contextlib.contextmanager
def new_file(target: str | Path, overwrite: bool = False, what: str = "mmfuse command", option: str = "--out"):
    """Like :func:`new_folder` for one file: yields a hidden sibling path to write; renamed onto ``target``
    only when the block ends without an error."""
    target = _absolute(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = TargetLock(target, what).acquire("wait for it to finish, or choose another " + option)
    try:
        _tidy(target)
        check_file_target(target, overwrite, option)
        tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            yield tmp
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        lock.release()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a small file by a temporary sibling and a rename: a reader sees the old text or the new, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
