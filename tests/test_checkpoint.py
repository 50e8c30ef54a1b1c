"""Checkpoints: atomic saves that survive kill -9, hostile files that never run, clear refusals.

(a) a process SIGKILLed while saving over a checkpoint leaves the previous one loadable;
(b) a pickle that would run code on load is refused by `sample` and `eval`, and runs nothing;
(c) another format version is named in the error;
(d) fuzzed bytes: `load_model` works or raises InputError, never anything else.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import random
import signal
import struct
import subprocess
import sys
import time
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, janelm
from janelm.checkpoint import (BEST, FORMAT, VERSION, load_checkpoint, load_model, resolve_checkpoint,
                               save_checkpoint)
from janelm.config import ModelConfig
from janelm.errors import InputError
from janelm.model import GPT
from janelm.tokenizer import CharTokenizer


def small_payload(seed: int = 0) -> dict:
    """What load_model needs, for a model small enough to save and load in milliseconds."""
    torch.manual_seed(seed)
    tok = CharTokenizer("abcdefghij .,\n")
    cfg = ModelConfig(vocab_size=tok.vocab_size, context=8, n_block=1, n_embed=8, n_head=2)
    return {"model_config": asdict(cfg), "tokenizer": tok.to_dict(), "model": GPT(cfg).state_dict()}


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------
# (a) atomic save under kill -9
# ------------------------------------------------------------------------------------------

# Saves checkpoints over the same path forever; each one's 50 MB tensor is filled with its own
# number, so a loaded file is either wholly one save or wholly another. Prints each number once
# that save is complete.
SAVER = """
import sys
from pathlib import Path
import torch
from janelm.checkpoint import save_checkpoint
path = Path(sys.argv[1])
big = torch.empty(12_500_000)  # 50 MB of float32: a write takes a while
i = 0
while True:
    big.fill_(float(i))
    save_checkpoint(path, {"model_config": {}, "tokenizer": {}, "model": {}, "tag": i, "big": big})
    print(i, flush=True)
    i += 1
"""


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))


def check_consistent(ckpt: dict) -> int:
    tag, big = ckpt["tag"], ckpt["big"]
    assert big.numel() == 12_500_000
    assert bool((big == float(tag)).all()), "a checkpoint mixing two saves"
    return tag


@pytest.mark.slow
def test_kill_9_while_saving_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / BEST
    save_checkpoint(path, {"model_config": {}, "tokenizer": {}, "model": {}, "tag": -1,
                           "big": torch.full((12_500_000,), -1.0)})
    rng = random.Random()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    killed_mid_write = 0
    for round in range(3):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout.readline().strip() == "0"  # one whole save done: the old file was replaced once
            if round == 1:
                time.sleep(rng.uniform(0.0, 0.6))  # any moment at all
            else:
                deadline = time.monotonic() + 30
                while not temporaries(tmp_path) and time.monotonic() < deadline:
                    time.sleep(0.002)  # wait until a write is under way...
                time.sleep(rng.uniform(0.0, 0.03))  # ...and strike somewhere inside it
            proc.send_signal(signal.SIGKILL)
            rest = proc.communicate(timeout=30)[0].split()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        last_done = int(rest[-1]) if rest else 0

        # The checkpoint is the last complete save, or the one whose rename had just happened.
        tag = check_consistent(load_checkpoint(path))
        assert tag in (last_done, last_done + 1)

        # A half-written temporary file may remain, but nothing takes it for a checkpoint.
        leftovers = temporaries(tmp_path)
        killed_mid_write += bool(leftovers)
        assert resolve_checkpoint(tmp_path) == path
        assert all(p.name.startswith(f".{BEST}.") for p in leftovers)
        for p in leftovers:
            try:
                check_consistent(load_checkpoint(p))  # killed between fsync and rename: complete
            except InputError:
                pass  # empty, truncated or half-written: refused as a checkpoint, as it should be
    assert killed_mid_write, "no kill landed inside a write: the test proved nothing"

    # The next save clears what the killed writers left behind.
    save_checkpoint(path, {"model_config": {}, "tokenizer": {}, "model": {}, "tag": 99,
                           "big": torch.full((12_500_000,), 99.0)})
    assert temporaries(tmp_path) == []
    assert check_consistent(load_checkpoint(path)) == 99


def test_a_temporary_file_of_a_live_process_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / BEST
    mine = tmp_path / f".{BEST}.{os.getppid()}.tmp"  # the parent (pytest's launcher) is alive
    mine.write_bytes(b"being written")
    dead = tmp_path / f".{BEST}.{2**22 + 12345}.tmp"  # above pid_max on Linux: no such process
    dead.write_bytes(b"left by a crash")
    save_checkpoint(path, small_payload())
    assert mine.exists() and not dead.exists()
    assert resolve_checkpoint(tmp_path) == path


# ------------------------------------------------------------------------------------------
# (b) a hostile checkpoint runs nothing
# ------------------------------------------------------------------------------------------


class Touch:
    """Unpickling this calls pathlib.Path.touch(target): the shape of any code-execution payload."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.target),))


class System:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def hostile_checkpoint(path: Path, payload_object) -> Path:
    """A file shaped like a JaneLM checkpoint whose model_config runs code when unpickled."""
    torch.save({"format": FORMAT, "version": VERSION, "model_config": payload_object, "tokenizer": {},
                "model": {}}, path)
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    canary = d / "PWNED"
    files = {
        "torch-touch": hostile_checkpoint(d / "touch.pt", Touch(canary)),
        "torch-system": hostile_checkpoint(d / "system.pt", System(f"touch {canary}")),
    }
    bare = d / "bare.pkl"
    bare.write_bytes(pickle.dumps({"format": FORMAT, "model": Touch(canary)}))
    files["bare-pickle"] = bare
    (d / "novel.txt").write_text("A short text to score. " * 20 + "\n")
    return d, canary, files


def test_the_hostile_files_are_live(hostile, tmp_path: Path) -> None:
    """The payloads really do run when loaded unsafely (else the tests below prove nothing)."""
    proof = tmp_path / "proof"
    hostile_checkpoint(tmp_path / "proof.pt", Touch(proof))
    torch.load(tmp_path / "proof.pt", weights_only=False)
    assert proof.exists()


@pytest.mark.parametrize("kind", ["torch-touch", "torch-system", "bare-pickle"])
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_hostile_checkpoint_is_refused_and_runs_nothing(hostile, command: str, kind: str) -> None:
    d, canary, files = hostile
    path = files[kind]
    args = ["sample", "-c", str(path), "-n", "5"] if command == "sample" else ["eval", "-c", str(path), str(d / "novel.txt")]
    proc = janelm(*args, check=False)
    line = one_error_line(proc)
    assert proc.returncode == 2, line
    assert line.startswith(f"janelm {command}: error: {path} ")
    if kind == "bare-pickle":
        assert "bare Python pickle" in line and "refused unread" in line
    else:
        assert "asks to run" in line and "safe loading refuses" in line
        # What torch names depends on the pickle protocol: getattr(Path, "touch") under protocol 2.
        assert any(name in line for name in (["posix.system"] if kind == "torch-system" else ["getattr", "Path.touch"]))
    assert proc.stdout == ""
    assert not canary.exists(), "the hostile payload ran"


def test_hostile_checkpoint_in_process(hostile) -> None:
    _, canary, files = hostile
    for path in files.values():
        with pytest.raises(InputError):
            load_model(path)
    assert not canary.exists()


# ------------------------------------------------------------------------------------------
# (c) another format version
# ------------------------------------------------------------------------------------------


def test_other_format_version_is_named(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    save_checkpoint(path, {**small_payload(), "version": 7, "janelm_version": "9.0.0"})
    with pytest.raises(InputError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "format version 7" in message and f"reads version {VERSION}" in message and "janelm 9.0.0" in message

    proc = janelm("sample", "-c", str(path), "-n", "3", check=False)
    line = one_error_line(proc)
    assert proc.returncode == 2
    assert line == f"janelm sample: error: {message}"


def test_the_current_version_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    save_checkpoint(path, small_payload())
    model, tokenizer, ckpt = load_model(path)
    assert ckpt["version"] == VERSION and tokenizer.vocab_size == model.config.vocab_size


def test_loading_is_quick_to_start(tmp_path: Path) -> None:
    """Loading builds the model without initialising it (its weights come from the file) and
    without the compiler, whose import alone took ~2 s of every `janelm sample`'s start-up."""
    path = tmp_path / "ok.pt"
    payload = small_payload(seed=3)
    save_checkpoint(path, payload)
    code = ("import sys, torch; from janelm.checkpoint import load_model; "
            f"model = load_model({str(path)!r})[0]; "
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules)); "
            "print(float(model.tok_embed.weight.sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert float(out[1]) == pytest.approx(float(payload["model"]["tok_embed.weight"].sum()), rel=1e-6)
    model = load_model(path)[0]  # in this process, where the rotary tables must still be right
    fresh = GPT(ModelConfig.from_dict(payload["model_config"]))
    assert torch.equal(model.blocks[0].attn.rotary.cos, fresh.blocks[0].attn.rotary.cos)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, payload["model"][name]), name


def test_weights_that_do_not_fit_the_config(tmp_path: Path) -> None:
    payload = small_payload()
    payload["model_config"] = {**payload["model_config"], "n_embed": 16}
    save_checkpoint(tmp_path / "x.pt", payload)
    with pytest.raises(InputError, match=r"do not fit its model config \(.+ is \[8, 8\], expected \[16, 16\]\)"):
        load_model(tmp_path / "x.pt")
    payload = small_payload()
    payload["model_config"] = {**payload["model_config"], "context": 10**12}
    save_checkpoint(tmp_path / "y.pt", payload)
    with pytest.raises(InputError, match="context of 1000000000000 positions"):
        load_model(tmp_path / "y.pt")


# ------------------------------------------------------------------------------------------
# (d) fuzz: damaged bytes give InputError or a model, nothing else
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> tuple[bytes, tuple[int, int], Path]:
    """A small valid checkpoint's bytes, the byte range of its pickle, and a scratch file."""
    d = tmp_path_factory.mktemp("fuzz")
    save_checkpoint(d / "valid.pt", small_payload())
    data = (d / "valid.pt").read_bytes()
    with zipfile.ZipFile(d / "valid.pt") as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    return data, (start, start + info.file_size), d / "mutant.pt"


mutations = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0), st.just(b"")),
    st.tuples(st.just("anywhere"), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("pickle"), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=4)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutations, min_size=1, max_size=3))
def test_fuzzed_checkpoint_loads_or_raises_input_error(valid, edits) -> None:
    data, (p0, p1), scratch = valid
    blob = bytearray(data)
    for kind, where, new in edits:
        if kind == "truncate":
            blob = blob[: int(where * len(blob))]
            continue
        lo, hi = (0, len(blob)) if kind == "anywhere" else (p0, min(p1, len(blob)))
        if hi <= lo:
            continue
        at = lo + int(where * (hi - lo - 1))
        blob[at : at + len(new)] = new
    scratch.write_bytes(bytes(blob))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model, tokenizer, _ = load_model(scratch)
        except InputError as e:
            assert str(e).startswith(str(scratch)) and "\n" not in str(e)
        else:
            assert tokenizer.vocab_size == model.config.vocab_size
    assert not caught, [str(w.message) for w in caught]  # a warning would be a second stderr line


def test_archive_needing_a_newer_zip_version(valid) -> None:
    """zipfile raises NotImplementedError (not BadZipFile) for an entry that claims to need zip 6.4:
    found by fuzzing; it must be an InputError like any other damage."""
    data, _, scratch = valid
    blob = bytearray(data)
    entry = blob.index(b"PK\x01\x02")  # the first central-directory entry
    blob[entry + 6 : entry + 8] = struct.pack("<H", 64)  # "version needed to extract": 6.4
    scratch.write_bytes(bytes(blob))
    with pytest.raises(InputError, match="damaged or truncated"):
        load_model(scratch)
