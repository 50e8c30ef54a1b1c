"""AOTInductor's C++ builds, side by side.

Compiling a decode step ahead of time ends in g++: AOTInductor compiles the step's wrapper and its
kernels (two independent C++ files) one after the other, then links them. Each uses one core: for a
tiny test model 7 s and 10 s on a 2-core Zen 4. `builds_side_by_side` starts each compile of a C++
file as it is asked for, in a process of its own, and has the next build that is not compile-only
(the link) wait for them, so the two files compile at once on a machine with the cores. (Other
compile-only builds, such as the weights' object that AOTInductor reads back at once, run as
before.) The commands and their outputs are AOTInductor's own; only when they run changes. Where this
PyTorch's builder is not the one this was written for, the builds run as PyTorch runs them.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
from contextlib import contextmanager, suppress
from typing import IO, Iterator


@contextmanager
def builds_side_by_side() -> Iterator[None]:
    """Inside: AOTInductor's compile-only C++ builds start at once and finish before the next other
    build (or the end of the block); a failed one raises PyTorch's CppCompileError there."""
    try:
        from torch._inductor import cpp_builder
        from torch._inductor.exc import CppCompileError
        builder = cpp_builder.CppBuilder
        original = builder.build
    except (ImportError, AttributeError):
        yield
        return
    # Each build's output (the compiler's warnings can fill a pipe and stall it) goes to a file.
    running: list[tuple[list[str], subprocess.Popen, IO[bytes]]] = []

    def finish() -> None:
        while running:
            cmd, proc, log = running.pop(0)
            with log:
                proc.wait()
                log.seek(0)
                output = log.read().decode(errors="replace")
            if proc.returncode != 0:
                stop()
                raise CppCompileError(cmd, output)

    def stop() -> None:
        for _, proc, log in running:
            with suppress(ProcessLookupError):  # g++ and the compiler it runs (cc1plus): its whole group
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log.close()
        running.clear()

    def build(self) -> None:
        compile_only = getattr(self, "_compile_only", None) is True
        cmd = shlex.split(self.get_command_line()) if compile_only and hasattr(self, "_output_dir") else []
        if getattr(self, "_use_relative_path", False) or not any(part.endswith(".cpp") for part in cmd):
            if not compile_only:  # a link, say: what it reads is compiled first
                finish()
            return original(self)
        os.makedirs(self._output_dir, exist_ok=True)
        log = tempfile.TemporaryFile()
        running.append((cmd, subprocess.Popen(cmd, cwd=self._output_dir, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True), log))

    builder.build = build
    try:
        yield
        finish()
    finally:
        builder.build = original
        stop()  # after an error elsewhere: nothing left compiling behind us
