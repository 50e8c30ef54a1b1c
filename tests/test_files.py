"""janelm.files: write failures in words, atomic writes that fail cleanly, the one-process folder lock."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, file_size_limit, obey_permissions, read_only_folders_work
from janelm.errors import InputError
from janelm.files import (LOCK_FILE, FolderBusy, acquire_lock, atomic_write_text, locked_folder, release_lock,
                          write_failure)

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize("code, words, fix", [
    (errno.ENOSPC, "no space left on device", "free some space or pass --out on another disk"),
    (errno.EFBIG, "file too large (a file-size limit)", "raise the limit (ulimit -f) or pass --out on another disk"),
    (errno.EACCES, "permission denied", "make run/ writable or pass --out elsewhere"),
    (errno.EROFS, "read-only file system", "pass --out on a writable disk"),
])
def test_write_failures_name_the_file_the_cause_and_the_fix(code: int, words: str, fix: str) -> None:
    error = write_failure(OSError(code, os.strerror(code)), Path("run/last.pt"))
    assert str(error) == f"{words} writing run/last.pt: {fix}"
    assert error.exit_code == 1


def test_an_unlisted_write_failure_still_names_the_file() -> None:
    error = write_failure(OSError(errno.EIO, os.strerror(errno.EIO)), Path("corpus/train.bin"), option="-o")
    assert str(error) == "input/output error writing corpus/train.bin: check the disk, or pass -o elsewhere"


# Writes `new` over a file holding `old` through atomic_write_text, in a child whose limits the
# test sets; prints the error line it got.
OVERWRITE = """
import sys
from pathlib import Path
from janelm.files import WriteFailure, atomic_write_text
try:
    atomic_write_text(Path(sys.argv[1]), "new " * 10_000)
except WriteFailure as e:
    print(e)
"""


def overwrite_in_child(path: Path, preexec_fn) -> str:
    proc = subprocess.run([sys.executable, "-c", OVERWRITE, str(path)], capture_output=True, text=True, env=ENV,
                          preexec_fn=preexec_fn, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout.strip()


def test_a_write_over_a_file_size_limit_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("old\n")
    line = overwrite_in_child(path, file_size_limit(1000))
    assert line == f"file too large (a file-size limit) writing {path}: raise the limit (ulimit -f) or pass --out on another disk"
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]  # no temporary left


def test_a_write_into_a_read_only_folder_keeps_the_old_file(tmp_path: Path) -> None:
    if not read_only_folders_work():
        pytest.skip("folder permissions cannot be made to apply here")
    folder = tmp_path / "run"
    folder.mkdir()
    path = folder / "metrics.csv"
    path.write_text("old\n")
    folder.chmod(0o555)
    try:
        line = overwrite_in_child(path, obey_permissions)
    finally:
        folder.chmod(0o755)
    assert line == f"permission denied writing {path}: make {folder}/ writable or pass --out elsewhere"
    assert path.read_text() == "old\n" and sorted(p.name for p in folder.iterdir()) == ["metrics.csv"]


def test_atomic_write_replaces_and_cleans_a_dead_writers_temporary(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    dead = tmp_path / f".metrics.csv.{2**22 + 12345}.tmp"  # above pid_max on Linux: no such process
    dead.write_text("half")
    atomic_write_text(path, "whole\n")
    assert path.read_text() == "whole\n" and not dead.exists()


# ------------------------------------------------------------------------------------------
# The folder lock
# ------------------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from janelm.files import acquire_lock
acquire_lock(Path(sys.argv[1]), "train")
print("held", flush=True)
time.sleep(600)
"""


def test_a_held_folder_is_refused_naming_the_holder_and_freed_when_it_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy) as refused:
            acquire_lock(tmp_path, "prepare")
        assert str(refused.value) == (f"{tmp_path}/ is in use by janelm process {holder.pid} (a prepare writing there): "
                                      f"wait for it to finish or stop it, or choose another --out")
        assert refused.value.exit_code == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()  # kill -9 left the file, but the kernel dropped the lock
    fd = acquire_lock(tmp_path, "train")
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    release_lock(fd, tmp_path)
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_second_lock_in_the_same_process_is_refused_too(tmp_path: Path) -> None:
    fd = acquire_lock(tmp_path, "train")
    try:
        with pytest.raises(FolderBusy, match=f"janelm process {os.getpid()} "):
            acquire_lock(tmp_path, "train")
    finally:
        release_lock(fd, tmp_path)


def test_a_lock_file_unlinked_while_being_opened_is_not_taken_for_the_lock(tmp_path: Path, monkeypatch) -> None:
    """The race a release opens: we open the lock file, its holder unlinks it and unlocks, a third
    process creates and locks a new one, and only then do we lock the old, unlinked file.
    Locking that orphan must not count: we are refused, naming the third process."""
    import fcntl

    import janelm.files

    first = acquire_lock(tmp_path, "train")
    real_flock, third = fcntl.flock, []

    def flock_after_a_release(fd: int, operation: int) -> None:
        if not third:
            release_lock(first, tmp_path)  # unlink, then unlock
            fd3 = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
            real_flock(fd3, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd3, b"4242\n")
            third.append(fd3)
        real_flock(fd, operation)

    monkeypatch.setattr(janelm.files.fcntl, "flock", flock_after_a_release)
    try:
        with pytest.raises(FolderBusy, match="in use by janelm process 4242 "):
            acquire_lock(tmp_path, "train")
    finally:
        for fd in third:
            os.close(fd)


def test_locked_folder_removes_the_folders_it_created_when_left_empty(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "new"
    with pytest.raises(InputError):
        with locked_folder(out, "prepare"):
            assert out.is_dir() and (out / LOCK_FILE).is_file()
            raise InputError("refused")
    assert not (tmp_path / "deep").exists()
    with locked_folder(out, "prepare"):
        (out / "meta.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["meta.json"]


def test_locked_folder_clears_temporaries_of_killed_writers(tmp_path: Path) -> None:
    stale = [tmp_path / ".last.pt.999999.tmp", tmp_path / ".metrics.csv.4.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("not ours")
    with locked_folder(tmp_path, "train"):
        assert not any(p.exists() for p in stale)
    assert (tmp_path / "notes.tmp").exists()


def test_locked_folder_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("text")
    with pytest.raises(InputError, match=r"--out .*notes.txt is a file, not a folder: choose another --out"):
        with locked_folder(tmp_path / "notes.txt", "train"):
            pass
