"""Bad input through the real CLI: every mistake is one clear stderr line, the right exit code, no damage.

Each row of CASES runs `janelm ...` in a subprocess inside one shared workspace (a corpus, a BPE
run, a char run, and a shelf of broken files). A row passes when:
  - the exit status is the row's (2 for usage and input problems);
  - stderr is exactly one line (no progress bars, no traceback) that names the problem;
  - stdout is empty for an error (only text and --json results ever go there);
  - no file or folder in the workspace was created, changed or removed (a prepare that fails
    after making its --out folder, e.g. `deep/new` for a too-short text, removes it again).

`busyrun/` and `busycorpus/` are held by another process for the whole session (the folder lock);
`rorun/` and `rocorpus/` have no write bits, and rows marked "read-only" run with root's
permission override dropped (conftest.obey_permissions); rows marked "fsize" run under a
3,000-byte file-size limit, so the first large write fails as on a full disk.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO, TINY, file_size_limit, janelm, obey_permissions, read_only_folders_work

LONG_PROMPT = "the lady was very " * 10  # 121 BPE tokens: longer than the runs' context of 32
UNKNOWN_CHARS = "§¶ ✓ 漢字\n"  # characters the synthetic novel never uses
TINY_FLAGS = " ".join(TINY)


@dataclass(frozen=True)
class Case:
    id: str
    command: str  # run in the workspace; {tiny} stands for the TINY train flags
    code: int  # expected exit status
    says: tuple[str, ...]  # what the one stderr line must contain
    stdout: str = ""  # what stdout must start with; an error must print nothing there
    xfail: str = ""  # why this row is expected to fail for now (and what change it needs)
    needs: str = ""  # "no-cuda": only meaningful on a machine without a GPU; "hf": needs the hf extra
    limit: str = ""  # "fsize": under a 3,000-byte file-size limit; "read-only": folder permissions apply
    cwd: str = ""  # a folder of the workspace to run in (the first-contact rows)


def row(id: str, command: str, code: int, *says: str, **extra) -> Case:
    return Case(id, command, code, says, **extra)


# fmt: off
CASES = [
    # --- prepare -------------------------------------------------------------------------------
    row("prepare-missing-path",         "prepare missing.txt --out new",                   2, "missing.txt", "no such file"),
    row("prepare-unknown-bundled-work", "prepare austen:persuasion --out new",             2,
        "austen:persuasion: no such work bundled with JaneLM", "austen:emma", "--gutenberg NUMBER"),
    row("prepare-empty-file",           "prepare empty.txt --out new",                     2, "empty.txt", "is empty"),
    row("prepare-folder-without-txt",   "prepare notext --out new",                        2, "notext", "no .txt files"),
    row("prepare-binary-file",          "prepare binary.txt --out new",                    2, "binary.txt", "binary file"),
    row("prepare-not-utf8",             "prepare latin1.txt --out new",                    2, "latin1.txt", "not UTF-8", "0xe9"),
    row("prepare-shorter-than-context", "prepare short.txt --out deep/new --vocab-size 300", 2, "too short", "context"),
    row("prepare-vocab-below-256",      "prepare novel.txt --out new --vocab-size 100",    2, "--vocab-size", "at least 257", "100"),
    row("prepare-vocab-absurd",         "prepare novel.txt --out new --vocab-size 1000000000", 2, "--vocab-size 1000000000", "too large"),
    row("prepare-out-is-a-file",        "prepare novel.txt --out novel.txt",               2, "--out novel.txt", "is a file, not a folder"),
    row("prepare-out-under-a-file",     "prepare novel.txt --out novel.txt/corpus",        2, "cannot write to novel.txt/corpus/", "Not a directory"),
    row("prepare-out-under-proc",       "prepare novel.txt --out /proc/janelm/corpus",     2, "cannot write to /proc/janelm/corpus/"),
    row("prepare-out-holds-a-corpus",   "prepare novel.txt --out corpus",                  2, "corpus/ already holds a prepared corpus", "--force"),
    row("prepare-folder-in-use",        "prepare novel.txt --out busycorpus --force",      1, "busycorpus/ is in use by janelm process", "choose another --out"),
    row("prepare-out-read-only",        "prepare novel.txt --out rocorpus --force",        2, "cannot write to rocorpus/", "Permission denied", limit="read-only"),
    row("prepare-file-size-limit",      "prepare novel.txt --out deep/new",                1,
        "file too large (a file-size limit) writing deep/new/train.bin", "ulimit -f", limit="fsize"),
    row("prepare-extra-same-file",      "prepare novel.txt --extra novel.txt --out new",   2,
        "--extra novel.txt is the same text as the main source novel.txt", "give it once"),
    row("prepare-extra-holds-validation-text", "prepare novel.txt --extra novel-crlf.txt --out new", 2,
        "--extra novel-crlf.txt holds a paragraph of novel.txt's validation split", "leave that text out"),
    row("prepare-extra-weight-without-extra", "prepare novel.txt --extra-weight 0.5 --out new", 2, "--extra-weight needs extra sources"),
    row("prepare-extra-weight-above-one", "prepare novel.txt --extra short.txt --extra-weight 1.5 --out new", 2,
        "--extra-weight must be from 0 to 1", "1.5"),
    row("prepare-extra-gutenberg-unknown-author", "prepare novel.txt --extra-gutenberg tolstoy --out new", 2,
        "--extra-gutenberg 'tolstoy'", "'dickens'", "eBook numbers"),
    # --- train ---------------------------------------------------------------------------------
    row("train-missing-data",           "train --data nowhere --out newrun {tiny}",        2, "no prepared corpus at nowhere/", "janelm prepare"),
    row("train-empty-data-folder",      "train --data emptydir --out newrun {tiny}",       2, "emptydir/ is not a prepared corpus", "meta.json is missing"),
    row("train-init-from-other-tokenizer", "train --data corpus280 --init-from run --out newrun {tiny}", 2,
        "--init-from", "another tokenizer", "corpus280/"),
    row("train-n-embed-not-divisible",  "train --data corpus --out newrun {tiny} --n-embed 30 --n-head 4", 2, "--n-embed 30", "--n-head 4"),
    row("train-lr-zero",                "train --data corpus --out newrun {tiny} --lr 0",  2, "--lr must be positive", "0.0"),
    row("train-lr-negative",            "train --data corpus --out newrun {tiny} --lr -1", 2, "--lr must be positive", "-1.0"),
    row("train-batch-size-zero",        "train --data corpus --out newrun {tiny} --batch-size 0", 2, "--batch-size must be positive", "0"),
    row("train-context-zero",           "train --data corpus --out newrun {tiny} --context 0", 2, "--context must be at least 1", "0"),
    row("train-max-iters-negative",     "train --data corpus --out newrun {tiny} --max-iters -5", 2, "--max-iters must not be negative", "-5"),
    row("train-cuda-without-cuda",      "train --data corpus --out newrun {tiny} --device cuda", 2, "--device cuda", "no CUDA", needs="no-cuda"),
    row("train-resume-without-checkpoint", "train --data corpus --out newrun --resume",    2, "--resume", "no last.pt in newrun/"),
    row("train-out-holds-another-run",  "train --data corpus --out run {tiny} --n-embed 64", 2, "run/ already holds a run", "--force"),
    row("train-out-is-a-file",          "train --data corpus --out novel.txt {tiny}",      2, "--out novel.txt is a file, not a folder"),
    # --nproc: what every process would refuse is said once, before torchrun starts them
    row("train-nproc-out-holds-another-run", "train --nproc 2 --device cpu --data corpus --out run {tiny}", 2,
        "run/ already holds a run", "--force"),
    row("train-nproc-resume-without-checkpoint", "train --nproc 2 --device cpu --data corpus --out newrun --resume", 2,
        "no last.pt in newrun/"),
    row("train-nproc-resume-other-model", "train --nproc 2 --device cpu --data corpus --out run --resume {tiny} --n-block 3", 2,
        "--resume keeps the run's model", "--n-block 3, but the run has 2"),
    row("train-nproc-missing-data",     "train --nproc 2 --device cpu --data nowhere --out newrun {tiny}", 2,
        "no prepared corpus at nowhere/"),
    # ... and what only the processes find is said once, not once a process (janelm.launch)
    row("train-nproc-refused-in-every-process", "train --nproc 2 --device cpu --data corpus --out newrun {tiny} --extra-weight 0.5", 2,
        "--extra-weight 0.5: corpus/ has no extra sources"),
    row("train-resume-other-model",     "train --data corpus --out run --resume {tiny} --n-block 3 --n-embed 64", 2,
        "--resume keeps the run's model", "--n-block 3, but the run has 2", "--n-embed 64, but the run has 32"),
    row("train-folder-in-use",          "train --data corpus --out busyrun {tiny}",        1, "busyrun/ is in use by janelm process", "choose another --out"),
    row("train-folder-in-use-force",    "train --data corpus --out busyrun {tiny} --force", 1, "busyrun/ is in use by janelm process"),
    row("train-folder-in-use-resume",   "train --data corpus --out busyrun {tiny} --resume", 1, "busyrun/ is in use by janelm process"),
    row("train-run-folder-read-only",   "train --data corpus --out rorun {tiny} --resume", 2, "cannot write to rorun/", "Permission denied", limit="read-only"),
    row("train-extra-weight-without-extras", "train --data corpus --out newrun {tiny} --extra-weight 0.5", 2,
        "--extra-weight 0.5: corpus/ has no extra sources", "--extra PATH"),
    row("train-extra-weight-above-one", "train --data corpus --out newrun {tiny} --extra-weight 1.5", 2,
        "--extra-weight must be from 0 to 1", "1.5"),
    row("train-extra-weight-schedule-without-extras", "train --data corpus --out newrun {tiny} --extra-weight 1:0", 2,
        "--extra-weight 1:0: corpus/ has no extra sources", "--extra PATH"),
    row("train-extra-weight-schedule-above-one", "train --data corpus --out newrun {tiny} --extra-weight 1:2", 2,
        "--extra-weight 1:2 is neither a share nor a schedule", "A:B", "1:0"),
    row("train-extra-weight-not-a-number", "train --data corpus --out newrun {tiny} --extra-weight half", 2,
        "--extra-weight half is neither a share nor a schedule", "0.3"),
    row("train-init-from-into-another-run", "train --data corpus --init-from run --out otherrun {tiny} --max-iters 1 --eval-interval 1", 2,
        "otherrun/ already holds a run", "--force"),
    # --- sample / eval: checkpoints ------------------------------------------------------------
    row("sample-checkpoint-missing",    "sample -c missing.pt -n 5",                       2, "checkpoint missing.pt does not exist"),
    row("eval-checkpoint-missing",      "eval -c missing.pt novel.txt",                    2, "checkpoint missing.pt does not exist"),
    row("sample-run-folder-empty",      "sample -c emptydir -n 5",                         2, "no checkpoint in emptydir/", "best.pt"),
    row("sample-checkpoint-truncated",  "sample -c half.pt -n 5",                          2, "half.pt", "truncated"),
    row("eval-checkpoint-truncated",    "eval -c half.pt novel.txt",                       2, "half.pt", "truncated"),
    row("sample-checkpoint-random-bytes", "sample -c random.pt -n 5",                      2, "random.pt is not a JaneLM checkpoint"),
    row("eval-checkpoint-random-bytes", "eval -c random.pt novel.txt",                     2, "random.pt is not a JaneLM checkpoint"),
    row("sample-checkpoint-zip-file",   "sample -c archive.pt -n 5",                       2, "archive.pt is a zip archive but not a PyTorch checkpoint"),
    row("eval-checkpoint-zip-file",     "eval -c archive.pt novel.txt",                    2, "archive.pt is a zip archive but not a PyTorch checkpoint"),
    row("sample-checkpoint-plain-tensor", "sample -c tensor.pt -n 5",                      2, "tensor.pt is not a JaneLM checkpoint", "format marker"),
    row("eval-checkpoint-plain-tensor", "eval -c tensor.pt novel.txt",                     2, "tensor.pt is not a JaneLM checkpoint", "format marker"),
    row("sample-checkpoint-text-file",  "sample -c novel.txt -n 5",                        2, "novel.txt is a text file, not a JaneLM checkpoint"),
    row("eval-checkpoint-text-file",    "eval -c novel.txt novel.txt",                     2, "novel.txt is a text file, not a JaneLM checkpoint"),
    # --- sample / eval: text -------------------------------------------------------------------
    row("sample-prompt-outside-char-vocab", "sample -c charrun -n 5 --prompt 'Hello 漢字'", 2, "never saw", "'漢', '字'"),
    row("sample-prompt-longer-than-context", "sample -c run -n 5 --seed 1 --prompt-file long_prompt.txt", 0,
        "note: the prompt is 121 tokens, longer than the model's context of 32", "last 32 tokens", stdout=LONG_PROMPT),
    row("eval-empty-file",              "eval -c run empty.txt",                           2, "empty.txt", "is empty"),
    row("eval-empty-file-char-run",     "eval -c charrun empty.txt",                       2, "empty.txt", "is empty"),
    row("eval-unknown-characters",      "eval -c charrun unknown.txt",                     2, "unknown.txt", "never saw", "'漢'"),
    row("eval-unknown-bundled-work",    "eval -c run austen:persuasion",                   2, "austen:persuasion: no such work bundled"),
    # --- first contact: each command of the README's first block too early, in a new folder ----------
    # (`empty/`: nothing at all; `clone/`: what a clone holds, corpus/ and checkpoints/ with a README each)
    row("first-train-before-prepare",   "train",                                           2,
        "no prepared corpus at corpus/", "run `janelm prepare` first", "--data FOLDER", cwd="empty"),
    row("first-train-in-a-clone",       "train",                                           2,
        "corpus/ is not a prepared corpus (meta.json is missing)", "run `janelm prepare` first", cwd="clone"),
    row("first-train-resume",           "train --resume",                                  2, "run `janelm prepare` first", cwd="empty"),
    row("first-sample-before-train",    "sample",                                          2,
        "no trained model in checkpoints/ yet: run `janelm train` first, or pass -c CKPT", cwd="empty"),
    row("first-sample-in-a-clone",      "sample -n 50",                                    2,
        "no trained model in checkpoints/ yet: run `janelm train` first, or pass -c CKPT", cwd="clone"),
    row("first-eval-before-train",      "eval",                                            2, "no trained model in checkpoints/ yet", "janelm train", cwd="empty"),
    row("first-eval-a-work-before-train", "eval austen:northanger-abbey",                  2, "no trained model in checkpoints/ yet", cwd="empty"),
    row("first-chat-before-train",      "chat",                                            2, "no trained model in checkpoints/ yet", "janelm train", cwd="empty"),
    row("first-export-before-train",    "export austen-llama",                             2, "no trained model in checkpoints/ yet", "janelm train", cwd="empty"),
    row("first-bench-before-train",     "bench sample -c checkpoints",                     2, "no trained model in checkpoints/ yet", cwd="empty"),
    row("first-bench-serve-before-train", "bench serve",                                   2, "no trained model in checkpoints/ yet", "janelm train", cwd="empty"),
    row("first-plot-before-train",      "plot checkpoints",                                2,
        "no metrics.csv in checkpoints/", "`janelm train --out checkpoints` first", cwd="clone"),
    # --- any command: usage --------------------------------------------------------------------
    row("prepare-unknown-flag",         "prepare novel.txt --out new --bogus",             2, "unrecognized arguments: --bogus"),
    row("train-unknown-flag",           "train --data corpus --bogus",                     2, "unrecognized arguments: --bogus"),
    row("sample-unknown-flag",          "sample -c run --bogus",                           2, "unrecognized arguments: --bogus"),
    row("eval-unknown-flag",            "eval -c run --bogus",                             2, "unrecognized arguments: --bogus"),
    row("unknown-command",              "fly",                                             2, "invalid choice: 'fly'"),
    row("sample-n-not-a-number",        "sample -n abc",                                   2, "-n/--num-tokens", "invalid int value: 'abc'"),
    row("train-lr-not-a-number",        "train --lr fast",                                 2, "--lr", "invalid float value: 'fast'"),
    row("prepare-vocab-not-a-number",   "prepare novel.txt --vocab-size big",              2, "--vocab-size", "invalid int value: 'big'"),
    row("eval-batch-size-not-a-number", "eval --batch-size x",                             2, "--batch-size", "invalid int value: 'x'"),
    # --- export and transformers folders ---------------------------------------------------------
    row("export-out-not-empty",         "export -c run corpus",                            2, "corpus/ is not empty", "--force"),
    row("export-out-is-a-file",         "export -c run novel.txt",                         2, "novel.txt is a file"),
    row("export-no-transformers-equivalent", "export -c relu2.pt newexport",               2,
        "--mlp relu2 with --position rope has no transformers equivalent", "LlamaForCausalLM needs", needs="hf"),
    row("sample-hf-unsupported-architecture", "sample -c hfbert -n 5",                     2, "hfbert/", "BertModel is not supported"),
    row("train-init-from-hf-unsupported-architecture", "train --data corpus --init-from hfbert --out newrun {tiny}", 2,
        "hfbert/", "BertModel is not supported"),
    row("sample-hf-sharded-weights",    "sample -c hfsharded -n 5",                        2, "hfsharded/", "sharded"),
    row("eval-hf-pickled-weights",      "eval -c hfpickle novel.txt",                      2, "hfpickle/", "pickled weights", "never loads"),
    row("sample-hf-no-tokenizer",       "sample -c hfnotokenizer -n 5",                    2, "hfnotokenizer/", "no tokenizer.json"),
    row("eval-hf-weights-do-not-fit",   "eval -c hfbadshape novel.txt",                    2,
        "hfbadshape/", "model.safetensors does not fit config.json", "model.layers.2", needs="hf"),
    row("prepare-tokenizer-from-hf-wordpiece", "prepare novel.txt --tokenizer-from hfwordpiece --out new", 2,
        "hfwordpiece/", "WordPiece model", "byte-level BPE", needs="hf"),
]
# fmt: on

ERROR_LINE = re.compile(r"janelm( [a-z]+)?: error: ")


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models train several times faster on one thread, above all on a busy machine."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


HOLDER = ("import sys, time\nfrom pathlib import Path\nfrom janelm.files import acquire_lock\n"
          "for folder in sys.argv[1:]:\n    acquire_lock(Path(folder), 'train')\nprint('held', flush=True)\ntime.sleep(3600)")


@pytest.fixture(scope="session")
def ws(tmp_path_factory, text_file, prepared, trained) -> Iterator[Path]:
    """The workspace every row runs in (paths in the commands are relative to it)."""
    ws = tmp_path_factory.mktemp("bad-input")
    shutil.copy(text_file, ws / "novel.txt")
    (ws / "empty.txt").write_bytes(b"")
    (ws / "notext").mkdir()
    (ws / "notext" / "notes.md").write_text("Not a .txt file.\n")
    (ws / "binary.txt").write_bytes(bytes(range(256)) * 40)
    (ws / "latin1.txt").write_bytes("Café society: a naïve début.\n".encode("latin-1") * 50)
    (ws / "short.txt").write_text("A short line of text.\n")
    (ws / "emptydir").mkdir()
    (ws / "empty").mkdir()
    for name in ("corpus", "checkpoints"):  # as a clone has them: a README.md in each, nothing else
        (ws / "clone" / name).mkdir(parents=True)
        (ws / "clone" / name / "README.md").write_text(f"{name}/ is written by janelm.\n")
    # The novel again with other bytes (Windows line ends): other sha256, the same paragraphs.
    (ws / "novel-crlf.txt").write_bytes(text_file.read_bytes().replace(b"\n", b"\r\n"))
    (ws / "long_prompt.txt").write_text(LONG_PROMPT)
    (ws / "unknown.txt").write_text(UNKNOWN_CHARS)
    shutil.copytree(prepared, ws / "corpus")
    shutil.copytree(trained, ws / "run")
    shutil.copytree(trained, ws / "otherrun")
    with one_thread():
        janelm("prepare", "novel.txt", "--out", "corpus280", "--vocab-size", "280", cwd=ws)
        janelm("prepare", "novel.txt", "--out", "charcorpus", "--tokenizer", "char", cwd=ws)
        janelm("train", "--data", "charcorpus", "--out", "charrun", *TINY, cwd=ws)

    best = (ws / "run" / "best.pt").read_bytes()
    (ws / "half.pt").write_bytes(best[: len(best) // 2])
    (ws / "random.pt").write_bytes(random.Random(0).randbytes(100_000))
    with zipfile.ZipFile(ws / "archive.pt", "w") as z:
        z.writestr("readme.txt", "A zip archive, not a checkpoint.\n")
    import torch

    buffer = io.BytesIO()
    torch.save(torch.zeros(3), buffer)
    (ws / "tensor.pt").write_bytes(buffer.getvalue())
    make_hf_folders(ws)

    shutil.copytree(trained, ws / "busyrun")
    shutil.copytree(prepared, ws / "busycorpus")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(ws / "busyrun"), str(ws / "busycorpus")],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "held"
    read_only = [ws / "rorun", ws / "rocorpus"]
    shutil.copytree(trained, read_only[0])
    shutil.copytree(prepared, read_only[1])
    for folder in read_only:
        folder.chmod(0o555)
    yield ws
    holder.kill()
    holder.wait()
    for folder in read_only:
        folder.chmod(0o755)


def have_hf() -> bool:
    return all(importlib.util.find_spec(name) for name in ("safetensors", "tokenizers"))


def make_hf_folders(ws: Path) -> None:
    """transformers folders that JaneLM must refuse, each in its own way."""
    (ws / "hfbert").mkdir()
    (ws / "hfbert" / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    llama = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    for name, files in (("hfsharded", ["model.safetensors.index.json", "model-00001-of-00002.safetensors"]),
                        ("hfpickle", ["pytorch_model.bin"])):
        (ws / name).mkdir()
        (ws / name / "config.json").write_text(llama)
        for file in files:
            (ws / name / file).write_bytes(b"{}")
    if not have_hf():
        return
    import torch

    from janelm.checkpoint import load_checkpoint, save_checkpoint
    from janelm.cli import main
    from janelm.config import ModelConfig, to_dict
    from janelm.model import GPT

    ckpt = load_checkpoint(ws / "run" / "best.pt")
    relu2 = ModelConfig.from_dict({**ckpt["model_config"], "mlp": "relu2"})
    save_checkpoint(ws / "relu2.pt", {**ckpt, "model_config": to_dict(relu2), "model": GPT(relu2).state_dict()})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model in this process: one thread is fastest on a busy machine
    try:
        assert main(["export", "-c", str(ws / "run"), str(ws / "hfgood")]) == 0
    finally:
        torch.set_num_threads(threads)
    shutil.copytree(ws / "hfgood", ws / "hfnotokenizer")
    (ws / "hfnotokenizer" / "tokenizer.json").unlink()
    shutil.copytree(ws / "hfgood", ws / "hfbadshape")
    config = json.loads((ws / "hfbadshape" / "config.json").read_text())
    (ws / "hfbadshape" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    shutil.copytree(ws / "hfgood", ws / "hfwordpiece")
    wordpiece = {"model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                           "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0, "a": 1}},
                 "added_tokens": [], "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": None}
    (ws / "hfwordpiece" / "tokenizer.json").write_text(json.dumps(wordpiece))


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with its content hash: any creation, change or removal shows."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            path = os.path.join(dirpath, f)
            out[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def params():
    for case in CASES:
        marks = []
        if case.xfail:
            marks.append(pytest.mark.xfail(reason=case.xfail, strict=True))
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", list(params()))
def test_bad_input(case: Case, ws: Path) -> None:
    if case.needs == "no-cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    if case.needs == "hf" and not have_hf():
        pytest.skip("the hf extra (safetensors, tokenizers) is not installed")
    if case.limit == "read-only" and not read_only_folders_work():
        pytest.skip("folder permissions cannot be made to apply here")
    preexec_fn = {"fsize": file_size_limit(3000), "read-only": obey_permissions}.get(case.limit)
    before = snapshot(ws)
    with one_thread():
        proc = janelm(*shlex.split(case.command.format(tiny=TINY_FLAGS)), cwd=ws / case.cwd, check=False, timeout=180,
                      preexec_fn=preexec_fn)
    after = snapshot(ws)

    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()  # \r counts too: a progress bar is not a clean line
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{proc.stderr}"
    line = lines[0]
    assert proc.returncode == case.code, line
    if case.code:
        assert ERROR_LINE.match(line), line
        assert "--debug" not in line, f"an unforeseen exception, not a handled error: {line}"
        assert proc.stdout == ""
    else:
        assert proc.stdout.startswith(case.stdout), proc.stdout
    for text in case.says:
        assert text in line, f"{text!r} not in: {line}"
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the failed command changed the workspace: {changed}"


def test_the_table_is_well_formed() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert all(c.says for c in CASES)


# ------------------------------------------------------------------------------------------
# The refusals give way to --force
# ------------------------------------------------------------------------------------------


def test_prepare_force_replaces_a_corpus(ws: Path, tmp_path: Path) -> None:
    """The row prepare-out-holds-a-corpus refuses; with --force the same command goes through."""
    out = tmp_path / "corpus"
    shutil.copytree(ws / "corpus", out)
    janelm("prepare", str(ws / "novel.txt"), "--out", str(out), "--tokenizer", "char", "--force")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"]["kind"] == "char"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]


def test_train_force_replaces_another_run(ws: Path, tmp_path: Path) -> None:
    """The row train-out-holds-another-run refuses; with --force a run of another shape replaces it."""
    out = tmp_path / "run"
    shutil.copytree(ws / "run", out)
    with one_thread():
        janelm("train", "--data", str(ws / "corpus"), "--out", str(out), *TINY, "--max-iters", "2",
               "--eval-interval", "1", "--n-embed", "16", "--force")
    import torch

    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["model_config"]["n_embed"] == 16 and ckpt["state"]["step"] == 2
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 3  # header and the two new steps: nothing of the old run


# --- fuzzing: prepare on arbitrary bytes gives a clear error or a valid corpus, never a crash ---------
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=3000),
                      st.text(max_size=3000).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_prepare_on_arbitrary_bytes(tmp_path_factory, data):
    from janelm.cli import main
    from janelm.data import load_corpus

    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "input.txt").write_bytes(data)
    code = main(["prepare", str(folder / "input.txt"), "--out", str(folder / "out"), "--tokenizer", "char"])
    assert code in (0, 2)
    if code == 0:
        corpus = load_corpus(folder / "out")
        assert len(corpus.train) > 0
    else:
        assert not (folder / "out" / "meta.json").exists()
