"""Files a user keeps: atomic replacement, one clear line when a write fails, one process per folder.

Every file JaneLM writes for the user (checkpoints, metrics.csv, loss.png, a prepared corpus,
downloads) goes through here or through `write_failure`, so a full disk, a file-size limit or a
read-only folder reads the same everywhere: the cause, the file, and what to do.

`train` and `prepare` hold their output folder with `locked_folder`: an exclusive `flock` on a
hidden file in it, so a second process writing the same folder is refused at once. The kernel
drops the lock when its process dies, however it dies, so a stale lock never blocks anyone.
Imports nothing heavy: `prepare` uses it before torch is loaded.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from janelm.errors import InputError, JaneLMError

LOCK_FILE = ".janelm.lock"


def cache_home() -> Path:
    """Where JaneLM keeps what it makes once and reuses (compiled code): $JANELM_CACHE, else
    $XDG_CACHE_HOME/janelm, else ~/.cache/janelm."""
    root = os.environ.get("JANELM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "janelm"
    return Path(root)


TEMPORARY = re.compile(r"\.(.+)\.(\d+)\.tmp")  # `.<name>.<pid>.tmp`, see atomic_write

# The write failures a user can do something about: what happened, and the fix.
WRITE_FAILURES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free some space or pass {option} on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or pass {option} on another disk"),
    errno.EFBIG: ("file too large (a file-size limit)", "raise the limit (ulimit -f) or pass {option} on another disk"),
    errno.EACCES: ("permission denied", "make {folder}/ writable or pass {option} elsewhere"),
    errno.EPERM: ("operation not permitted", "make {folder}/ writable or pass {option} elsewhere"),
    errno.EROFS: ("read-only file system", "pass {option} on a writable disk"),
}


class WriteFailure(JaneLMError):
    """A file could not be written (exit 1); what was written before is intact."""


class FolderBusy(JaneLMError):
    """Another process holds the folder's lock (exit 1): waiting, or another folder, fixes it."""


def write_failure(error: OSError, path: Path | str, option: str = "--out") -> WriteFailure:
    """One line for a failed write of `path`: `no space left on device writing run/last.pt: free …`.
    `option` is the flag that chooses where the file goes."""
    path = Path(path)
    words, fix = WRITE_FAILURES.get(error.errno or 0, ((error.strerror or str(error)).lower(),
                                                      "check the disk, or pass {option} elsewhere"))
    return WriteFailure(f"{words} writing {path}: {fix.format(option=option, folder=path.parent)}")


@contextmanager
def reporting_write_failures(path: Path | str, option: str = "--out") -> Iterator[None]:
    """Turn an OSError raised inside into a WriteFailure naming `path`."""
    try:
        yield
    except OSError as e:
        raise write_failure(e, path, option) from None


def atomic_write(path: Path, write: Callable[[BinaryIO], None], option: str = "--out") -> None:
    """Write `path` through `write(file)` so that a crash at any moment leaves the old file or the
    new one, never a mix: temporary file, fsync, rename, fsync the folder.

    The temporary file is `.<name>.<pid>.tmp` beside `path`: hidden, and never named like the
    file it becomes. A failed write raises WriteFailure and removes it; one left behind by a
    killed process is removed by the next write of `path` (or the next lock of the folder)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except OSError as e:
        raise write_failure(e, path, option) from None
    finally:
        with suppress(OSError):  # none there (a read-only folder may say EACCES even so), or already renamed
            tmp.unlink()


def atomic_write_text(path: Path, text: str, option: str = "--out") -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), option)


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        pass  # alive under another user, or not a pid at all: leave it
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete `.<name>.<pid>.tmp` files beside `path` whose writing process no longer exists."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        match = TEMPORARY.fullmatch(tmp.name)
        if match and match.group(1) == path.name and int(match.group(2)) != os.getpid() and not _alive(int(match.group(2))):
            tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------
# One process per folder
# ------------------------------------------------------------------------------------------


def create_folder(folder: Path, option: str = "--out") -> Path | None:
    """Create `folder` and missing parents; returns the top-most folder created (None if it
    existed), so a failed command can remove what it made (`remove_created`)."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder} is a file, not a folder: choose another {option}")
    top = None
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        top = parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_created(folder, top)
        raise InputError(f"cannot write to {folder}/ ({e.strerror or e}): choose another {option}") from None
    return top


def remove_created(folder: Path, top: Path | None) -> None:
    """Remove the folders from `folder` up to `top` that a failed command created, as long as they
    are empty: whatever is in them (a download cache worth keeping) keeps them."""
    if top is None or (folder != top and top not in folder.parents):
        return
    for parent in (folder, *folder.parents):
        try:
            parent.rmdir()
        except OSError:
            return
        if parent == top:
            return


def _holder(fd: int) -> str:
    """The pid written in a lock file, or '' while its holder has not written it yet."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else ""


def acquire_lock(folder: Path, command: str, option: str = "--out") -> int:
    """Lock `folder` for this process, at once or never: returns the lock file's descriptor.

    The lock file is removed on release while still locked, so a process that opened it just
    before may lock a file that is no longer there: it checks that the path still names the
    file it locked, and tries again if not."""
    path = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise InputError(f"cannot write to {folder}/ ({e.strerror or e}): choose another {option}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            who = f"janelm process {pid}" if pid else "another janelm process"
            raise FolderBusy(f"{folder}/ is in use by {who} (a {command} writing there): wait for it to finish "
                             f"or stop it, or choose another {option}") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def release_lock(fd: int, folder: Path) -> None:
    try:
        (folder / LOCK_FILE).unlink()  # before unlocking: see acquire_lock
    except OSError:
        pass  # a read-only folder keeps the file; the lock itself goes with the descriptor
    os.close(fd)


@contextmanager
def waiting_lock(path: Path, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if needed), waiting while another process
    holds it (`on_wait` is called once, before waiting). The file stays. Where it cannot be made (a
    read-only folder) nothing is locked: whatever follows fails or not on its own."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # the lock goes with the descriptor


@contextmanager
def locked_folder(folder: Path, command: str, option: str = "--out") -> Iterator[None]:
    """Hold `folder` (created if needed) for one command; refuse at once if another process holds it.

    Inside, no other janelm process writes the folder, so temporary files left there by a killed
    writer are removed. On the way out the lock file goes, and so do the folders this call
    created if the command left them empty (a refused or failed command leaves nothing behind)."""
    folder = Path(folder)
    top = create_folder(folder, option)
    try:
        fd = acquire_lock(folder, command, option)
    except BaseException:
        remove_created(folder, top)
        raise
    try:
        for tmp in folder.glob(".*.tmp"):
            match = TEMPORARY.fullmatch(tmp.name)
            if match and int(match.group(2)) != os.getpid():
                with suppress(OSError):
                    tmp.unlink()
        yield
    finally:
        release_lock(fd, folder)
        remove_created(folder, top)
