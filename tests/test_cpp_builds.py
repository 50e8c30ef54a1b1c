"""AOTInductor's C++ builds side by side (janelm.cpp_builds), with PyTorch's own builder on real files."""

from __future__ import annotations

import ctypes
import os
import stat
import time
from pathlib import Path

import pytest

cpp_builder = pytest.importorskip("torch._inductor.cpp_builder")

from torch._inductor.exc import CppCompileError

from janelm.cpp_builds import builds_side_by_side


def slow_compiler(folder, seconds: float = 0.5) -> str:
    """g++ that notes when each compile starts and ends, and takes `seconds` more."""
    script = folder / "slow-g++"
    script.write_text(f'#!/bin/sh\necho start >> "$LOG"\nsleep {seconds}\ng++ "$@"; code=$?\necho end >> "$LOG"\nexit $code\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def builder(folder, name: str, sources: list[str], compile_only: bool, compiler: str = ""):
    options = cpp_builder.CppOptions(compile_only=compile_only, compiler=compiler)
    return cpp_builder.CppBuilder(name, sources, options, output_dir=str(folder))


def test_two_files_compile_at_once_and_the_link_waits_for_both(tmp_path, monkeypatch):
    monkeypatch.setenv("LOG", str(tmp_path / "log"))
    compiler = slow_compiler(tmp_path)
    objects = []
    original = cpp_builder.CppBuilder.build
    with builds_side_by_side():
        for name, value in (("one", 1), ("two", 2)):
            (tmp_path / f"{name}.cpp").write_text(f'extern "C" int {name}() {{ return {value}; }}\n')
            compile_file = builder(tmp_path, name, [str(tmp_path / f"{name}.cpp")], True, compiler)
            compile_file.build()
            objects.append(compile_file.get_target_file_path())
        library = builder(tmp_path, "both", objects, False)
        library.build()  # the link: it finds both objects compiled
    assert cpp_builder.CppBuilder.build is original  # PyTorch's builder as it was, after the block
    # Both compiles started before either ended: side by side, not one after the other.
    assert (tmp_path / "log").read_text().split() == ["start", "start", "end", "end"]
    loaded = ctypes.CDLL(library.get_target_file_path())
    assert loaded.one() + loaded.two() == 3


def test_a_failed_compile_raises_pytorchs_error_and_leaves_nothing_running(tmp_path, monkeypatch):
    monkeypatch.setenv("LOG", str(tmp_path / "log"))
    (tmp_path / "good.cpp").write_text('extern "C" int good() { return 1; }\n')
    (tmp_path / "bad.cpp").write_text("int bad( { return 1; }\n")
    with pytest.raises(CppCompileError, match="bad.cpp") as raised:
        with builds_side_by_side():
            for name in ("bad", "good"):
                builder(tmp_path, name, [str(tmp_path / f"{name}.cpp")], True).build()
    assert "error" in raised.value.output  # the compiler's own words, as PyTorch gives them
    assert not list(tmp_path.glob("bad.o"))
    # An error raised elsewhere inside the block stops the compiles it started.
    with pytest.raises(KeyboardInterrupt):
        with builds_side_by_side():
            builder(tmp_path, "late", [str(tmp_path / "good.cpp")], True, slow_compiler(tmp_path, 10)).build()
            started = time.monotonic()
            while not (tmp_path / "log").exists() and time.monotonic() - started < 10:
                time.sleep(0.01)  # until the compile is under way
            raise KeyboardInterrupt
    # Nothing it had started runs on either (the driver's own compiler; here the script's 10-second
    # `sleep`, which outlives a kill of the script alone): within a second, killed processes are gone.
    deadline = time.monotonic() + 1.0
    while (left := [p for p in Path("/proc").glob("[0-9]*") if _cwd(p) == tmp_path]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left
    assert (tmp_path / "log").read_text().split() == ["start"]
    assert not list(tmp_path.glob("late.o"))


def _cwd(process: Path) -> Path | None:
    """The folder a process runs in, or None (one that ended meanwhile, or not ours to read)."""
    try:
        return Path(os.readlink(process / "cwd"))
    except OSError:
        return None
