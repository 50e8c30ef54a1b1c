"""The decode step compiled ahead of time on the CPU: kept on disk, found again by later runs,
the same tokens as the eager step, and every failure a note and uncompiled decoding."""

from __future__ import annotations

import copy
import errno
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from conftest import REPO

import janelm.decode_step as decode_step
import janelm.step_cache as step_cache
from janelm.config import ModelConfig, SamplingOptions
from janelm.decode_step import CachedCompiledStep, decode_step_for
from janelm.device import cpu_has_native_bf16
from janelm.generate import generate_tokens
from janelm.model import GPT
from janelm.quantize import HALF_MAX_ROWS, inference_weights

GREEDY = SamplingOptions(temperature=0)


@pytest.fixture(scope="module")
def model():
    """Float32 with float16 matrices: what sampling runs on the CPU by default."""
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(vocab_size=40, context=16, n_block=1, n_embed=32, n_head=4)).eval()
    return inference_weights(gpt, "cpu", torch.float16)


def tokens(model, compile, batch: int = 2, n: int = 40) -> list:
    """Greedy tokens in and past the context (16), where the window slides and the prompt is redone."""
    return [t.tolist() for t in generate_tokens(model, [1, 2], n, GREEDY, batch_size=batch, compile=compile)]


def failing(error: Exception):
    """A stand-in for compile_ahead that fails as compiling can."""
    def compile_ahead(*args, **kwargs):
        raise error
    return compile_ahead


def step_of(model, batch: int, compile):
    return decode_step_for(model, model.new_cache(batch), torch.zeros((), dtype=torch.long), batch, compile)


def test_a_compiled_step_is_kept_and_found_again(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JANELM_CACHE", str(tmp_path))
    eager = tokens(model, compile=False)
    formula = step_cache.compile_estimate_s(model.config)
    assert tokens(model, compile=True) == eager
    files = list((tmp_path / "decode").glob("*.pt2"))
    assert len(files) == 1 and "compiling the decode step" in capsys.readouterr().err
    # The time it took is remembered: the next estimate (what `train --compile-decode` reserves) is it.
    took = next(iter(json.loads((tmp_path / "decode" / step_cache.COMPILE_TIMES).read_text()).values()))
    assert 0 < took and step_cache.compile_estimate_s(model.config) == pytest.approx(1.2 * took + 2.0) != formula
    times = tmp_path / "decode" / step_cache.COMPILE_TIMES
    times.write_text('{"another shape": 5.0}')  # known for other shapes only: the formula
    assert step_cache.compile_estimate_s(model.config) == formula
    times.write_text("[not what it should be")  # damaged: the formula, and the next compile rewrites it
    assert step_cache.compile_estimate_s(model.config) == formula
    step_cache.remember_compile_time(model.config, 7.0)
    assert step_cache.compile_estimate_s(model.config) == pytest.approx(1.2 * 7.0 + 2.0)
    # An ensemble of this shape compiles each member's blocks: its time is its own.
    three = replace(model.config, members=3)
    assert step_cache.compile_estimate_s(three) > formula  # none known for three members: their formula
    step_cache.remember_compile_time(three, 19.0)
    assert (step_cache.compile_estimate_s(three), step_cache.compile_estimate_s(model.config)) == (
        pytest.approx(1.2 * 19.0 + 2.0), pytest.approx(1.2 * 7.0 + 2.0))
    # A time measured with other code (before an upgrade) is not this code's: the formula.
    times.write_text(times.read_text().replace(step_cache.code_version(), "0" * 16))
    assert step_cache.compile_estimate_s(model.config) == formula
    step_cache.remember_compile_time(model.config, 9.0)  # and the stale entry is dropped
    assert list(json.loads(times.read_text()).values()) == [9.0]

    fresh = copy.deepcopy(model)  # as a later run would load it: nothing compiled in memory
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    assert isinstance(step_of(fresh, 2, compile=None), CachedCompiledStep)  # the default finds it
    # Loaded, the library leaves nothing unpacked behind (a process that never destroys it too)
    assert list(temporary.iterdir()) == [] and os.environ["TMPDIR"] == str(temporary)
    assert tokens(fresh, compile=None) == eager
    assert "compiling" not in capsys.readouterr().err
    assert step_of(fresh, 2, compile=False) == fresh.decode_step  # --no-compile never uses it
    assert step_of(fresh, 1, compile=None) == fresh.decode_step  # another batch size: not compiled
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.blocks[0].mlp.down.weight[0, 0] += 1  # other weights: another step
    assert step_of(changed, 2, compile=None) == changed.decode_step
    assert list((tmp_path / "decode").glob("*.pt2")) == files

    files[0].write_bytes(b"not a compiled model")  # damaged: a note, the file goes, decoding goes on
    damaged = copy.deepcopy(model)
    assert step_of(damaged, 2, compile=None) == damaged.decode_step
    assert "could not be loaded" in capsys.readouterr().err and not files[0].exists()
    assert tokens(damaged, compile=None) == eager


@pytest.mark.parametrize("error, words", [
    (OSError(errno.EROFS, "Read-only file system"), "cannot write"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "g++"),
     "could not compile the decode step ([Errno 2] No such file or directory: 'g++')"),
    (RuntimeError("unsupported operation\nmore"), "could not compile the decode step (unsupported operation)"),
    (RuntimeError(""), "could not compile the decode step (RuntimeError)"),
])
def test_a_step_that_cannot_be_compiled_decodes_uncompiled(model, tmp_path, monkeypatch, capsys, error, words):
    monkeypatch.setenv("JANELM_CACHE", str(tmp_path))
    monkeypatch.setattr(decode_step, "compile_ahead", failing(error))
    fresh = copy.deepcopy(model)
    assert tokens(fresh, compile=True, n=20) == tokens(fresh, compile=False, n=20)
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("note: ") and words in lines[-1] and lines[-1].endswith("decoding uncompiled")
    if getattr(error, "errno", None) == errno.EROFS:
        assert "JANELM_CACHE" in lines[-1]
    tokens(fresh, compile=True, n=5)  # the same model again (chat's next turn): not tried, not said again
    assert capsys.readouterr().err == ""


def test_bench_says_when_it_could_not_compile(model, tmp_path, monkeypatch, capsys):
    """bench sample reports the path it really timed: uncompiled, where compiling failed."""
    from janelm.speed import measure_sampling

    monkeypatch.setenv("JANELM_CACHE", str(tmp_path))
    monkeypatch.setattr(decode_step, "compile_ahead", failing(RuntimeError("no compiler")))
    torch.manual_seed(0)
    fresh = GPT(ModelConfig(vocab_size=40, context=16, n_block=1, n_embed=32, n_head=4)).eval()
    result = measure_sampling(fresh, torch.float16, new_tokens=8, repeats=1)
    assert not result["compiled"] and "compile_s" not in result and "eager_decode_tokens_per_s" not in result
    assert result["decode_tokens_per_s"] > 0
    assert capsys.readouterr().err.count("could not compile") == 1


def test_the_cache_keeps_the_recently_used(tmp_path, monkeypatch):
    monkeypatch.setattr(step_cache, "CACHE_LIMIT_BYTES", 150)
    now = time.time()
    ages = {"old.pt2": 300, "middle.pt2": 200, "new.pt2": 100, ".x.1.tmp.pt2": 2 * 86_400, ".y.2.tmp.pt2": 10}
    for name, age in ages.items():
        (tmp_path / name).write_bytes(b"x" * 100)
        os.utime(tmp_path / name, (now - age, now - age))
    step_cache.trim_cache(tmp_path, keep=tmp_path / "old.pt2")
    # newest first: new (100 bytes) fits, middle would pass the limit, old is the one just made;
    # a compilation's temporary file goes once it is a day old (its process is long gone).
    assert sorted(p.name for p in tmp_path.iterdir()) == [".y.2.tmp.pt2", "new.pt2", "old.pt2"]


def test_the_default_compiles_only_long_outputs(model, tmp_path, monkeypatch):
    made = []
    monkeypatch.setenv("JANELM_CACHE", str(tmp_path))
    monkeypatch.setattr(decode_step, "_cached_or_compiled", lambda model, batch, any_batch, path, compile: made.append(compile))
    position = torch.zeros((), dtype=torch.long)
    for n, compile in ((500, None), (decode_step.AUTO_COMPILE_TOKENS, None), (10, True), (10**6, False)):
        fresh = copy.deepcopy(model)  # each its own: a failed compilation is not tried again on a model
        decode_step_for(fresh, fresh.new_cache(1), position, 1, compile, new_tokens=n)
    assert made == [False, True, True]  # --no-compile does not even look


def test_the_attention_span_covers_the_furthest_row_in_steps_of_span_step():
    span = decode_step.attention_span
    step = decode_step.SPAN_STEP
    assert span(torch.tensor([0]), 256) == step and span(torch.tensor([step - 1]), 256) == step
    assert span(torch.tensor([step]), 256) == 2 * step
    assert span(torch.tensor([3, step + 5]), 256) == 2 * step  # the batch's furthest row
    assert span(torch.tensor([250]), 80) == 80  # never past the context


def test_a_compiled_step_reads_the_cache_positions_in_use(tmp_path, monkeypatch):
    """Past SPAN_STEP positions the compiled step attends over a longer span of the cache, from one
    library for every span, and gives the eager step's tokens (which attends over the whole cache)."""
    monkeypatch.setenv("JANELM_CACHE", str(tmp_path))
    torch.manual_seed(0)
    long = inference_weights(GPT(ModelConfig(vocab_size=40, context=80, n_block=1, n_embed=32, n_head=4)).eval(),
                             "cpu", torch.float16)
    spans, measured = [], decode_step.attention_span
    monkeypatch.setattr(decode_step, "attention_span", lambda position, context: spans.append(measured(position, context)) or spans[-1])
    eager = [t.tolist() for t in generate_tokens(long, [1, 2], 100, GREEDY, compile=False)]
    assert not spans  # the eager step reads the whole cache
    assert [t.tolist() for t in generate_tokens(long, [1, 2], 100, GREEDY, compile=True)] == eager
    assert sorted(set(spans)) == [32, 64, 80]  # in steps of SPAN_STEP, then the whole context
    assert len(list((tmp_path / "decode").glob("*.pt2"))) == 1


def test_a_step_compiled_for_any_batch_serves_every_size_up_to_its_own(model, tmp_path, monkeypatch):
    """A server's batch step: one library for 2 to max rows, the first rows of a max-row cache, at
    their own positions; past HALF_MAX_ROWS its products go through float32 (rounded as the 16-bit
    kernel rounds), so its logits are the eager step's to rounding. A fixed-size step of that size
    is another file. (Up to HALF_MAX_ROWS: tests/test_batcher.py, and the bf16 test below.)"""
    monkeypatch.setenv("JANELM_CACHE", str(tmp_path))
    import torch._inductor as inductor

    compiling, seen = inductor.aoti_compile_and_package, []

    def recorded(*args, **kwargs):  # the compiler's "freezing" (weights folded and packed) needs gradients off
        seen.append((torch.is_grad_enabled(), kwargs["inductor_configs"]["cpp.threads"]))
        return compiling(*args, **kwargs)

    monkeypatch.setattr(inductor, "aoti_compile_and_package", recorded)
    fresh = copy.deepcopy(model)
    most = HALF_MAX_ROWS + 1
    step = decode_step.cpu_compiled_step(fresh, most, compile=True, any_batch=True)
    assert isinstance(step, CachedCompiledStep)
    assert seen == [(False, torch.get_num_threads())]  # a batch's kernels on the threads it steps on
    cache = fresh.new_cache(most)
    torch.manual_seed(1)
    for layer in cache.keys + cache.values:  # an earlier text in every row
        layer.normal_()
    with torch.inference_mode():
        for rows in (2, 3, most):
            token, position = torch.randint(0, 40, (rows, 1)), torch.tensor([3, 15, 7, 0, 1, 2, 4, 5, 6][:rows])
            eager_cache = cache.rows(0, rows)
            expected = fresh.decode_step(token, position, eager_cache)  # before the step writes the cache
            compiled = step(token, position, cache.rows(0, rows))
            assert compiled.shape == (rows, 40)
            torch.testing.assert_close(compiled, expected, atol=2e-2, rtol=2e-2)
    assert len(list((tmp_path / "decode").glob("*.pt2"))) == 1
    assert step_cache.step_key(fresh, most, any_batch=True) != step_cache.step_key(fresh, most)
    threads = torch.get_num_threads()
    key = step_cache.step_key(fresh, most, any_batch=True)
    try:  # compiled for its threads: another count is another library
        torch.set_num_threads(threads % 2 + 1)
        assert step_cache.step_key(fresh, most, any_batch=True) != key
    finally:
        torch.set_num_threads(threads)


def test_a_server_of_two_rows_compiles_its_batch_step(model, tmp_path, monkeypatch):
    """`--max-rows 2`: batches are always 2 rows, so that step is compiled for 2 alone (a range of
    2 to 2 rows made the compiler refuse, and batches decoded uncompiled)."""
    monkeypatch.setenv("JANELM_CACHE", str(tmp_path))
    fresh = copy.deepcopy(model)
    step = decode_step.batch_step_for(fresh, 2, compile=True)
    assert isinstance(step, CachedCompiledStep)
    cache = fresh.new_cache(2)
    token, position = torch.tensor([[5], [9]]), torch.tensor([0, 0])
    with torch.inference_mode():
        torch.testing.assert_close(step(token, position, cache.rows(0, 2)), fresh.decode_step(token, position, fresh.new_cache(2)),
                                   atol=2e-2, rtol=2e-2)


def test_the_compilers_own_products_are_taken_for_a_few_rows_in_the_formats_it_has(model, monkeypatch):
    """Up to HALF_MAX_ROWS rows a step's products are the compiler's GEMM template (float32, bf16,
    float16 matrices; AVX2 or AVX-512), on the step's threads, and at any number of rows for bf16
    matrices on an AMX CPU; more rows otherwise, float64, or another instruction set: PyTorch's
    kernels."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert decode_step.template_products(model, 1) and decode_step.template_products(model, HALF_MAX_ROWS)
    assert not decode_step.template_products(model, HALF_MAX_ROWS + 1)
    options = decode_step.step_options(model, 1)
    assert options["max_autotune_gemm_backends"] == "CPP" and options["cpp.threads"] == torch.get_num_threads()
    assert "max_autotune_gemm_backends" not in decode_step.step_options(model, 16, any_batch=True)
    assert decode_step.step_options(model, 16)["cpp.threads"] == 1  # sample's fixed 16 rows: one thread, as before
    assert not decode_step.template_products(copy.deepcopy(model).double(), 1)
    # bf16 matrices on an AMX CPU: the template's AMX kernels, at any number of rows
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    for amx in (True, False):
        monkeypatch.setattr(decode_step, "cpu_has_amx", lambda amx=amx: amx)
        assert decode_step.template_products(bf16, 16) is amx and decode_step.template_products(bf16, 64) is amx
        assert decode_step.template_products(bf16, HALF_MAX_ROWS) and not decode_step.template_products(model, 16)
        for any_batch in (True, False):  # a server's batches and sample's --num-samples 16
            assert ("max_autotune_gemm_backends" in decode_step.step_options(bf16, 16, any_batch)) is amx
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert not decode_step.template_products(model, 1) and not decode_step.template_products(bf16, 16)


def test_a_step_another_process_is_compiling_is_waited_for_and_then_loaded(model, tmp_path, monkeypatch, capsys):
    """Two processes needing the same step: the second waits for the first's lock, then loads its
    file instead of compiling again."""
    import threading

    from janelm.files import waiting_lock

    monkeypatch.setenv("JANELM_CACHE", str(tmp_path))
    compiled, loaded = [], []
    monkeypatch.setattr(decode_step, "compile_ahead", lambda *args: compiled.append(args))
    monkeypatch.setattr(decode_step, "CachedCompiledStep", lambda path: loaded.append(path.read_text()) or path)
    fresh = copy.deepcopy(model)
    path = step_cache.cache_root() / f"{step_cache.step_key(fresh, 1)}.pt2"
    path.parent.mkdir(parents=True)
    holding, release = threading.Event(), threading.Event()

    def other_process():  # a lock on another open file: as another process's
        with waiting_lock(path.with_name(f".{path.stem}.lock")):
            holding.set()
            release.wait(30)
            path.write_text("its library")

    other = threading.Thread(target=other_process)
    other.start()
    assert holding.wait(30)
    result = []
    waiter = threading.Thread(target=lambda: result.append(decode_step.cpu_compiled_step(fresh, 1, compile=True)))
    waiter.start()
    deadline = time.monotonic() + 30
    while "waiting for another process" not in capsys.readouterr().err and time.monotonic() < deadline:
        time.sleep(0.05)
    assert waiter.is_alive() and not loaded  # waits, and has not compiled
    release.set()
    other.join(30)
    waiter.join(30)
    assert result == [path] and loaded == ["its library"] and not compiled


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="bf16 batch products are taken only where bf16 is native")
def test_a_bf16_models_batch_step_multiplies_in_bf16_as_its_lone_rows_do(tmp_path, monkeypatch):
    """With bf16 matrices (native), a batch step's products stay in bf16, the lone kernel's rounding,
    and its logits are the eager step's to rounding."""
    monkeypatch.setenv("JANELM_CACHE", str(tmp_path))
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(vocab_size=40, context=16, n_block=1, n_embed=32, n_head=4)).eval()
    bf16 = inference_weights(copy.deepcopy(gpt), "cpu", torch.bfloat16)  # in place: each format its own copy

    def product_dtypes(layer, most: int, fixed: int = 0) -> set:
        """What the matrix products of `layer` take compiled for 2 to `most` rows (or `fixed` rows)."""
        rows = None if fixed else ({0: torch.export.Dim("rows", min=2, max=most)},)
        graph = torch.export.export(layer, (torch.randn(fixed or 3, 32),), dynamic_shapes=rows, strict=False).graph
        return {n.args[0].meta["val"].dtype for n in graph.nodes if n.target is torch.ops.aten.mm.default}

    assert product_dtypes(bf16.blocks[0].attn.qkv, 16) == product_dtypes(bf16.blocks[0].attn.qkv, 4) == {torch.bfloat16}
    assert product_dtypes(bf16.blocks[0].attn.qkv, 0, fixed=16) == {torch.bfloat16}  # sample's --num-samples 16
    float16 = inference_weights(copy.deepcopy(gpt), "cpu", torch.float16)
    # float16 as stored up to HALF_MAX_ROWS rows (the compiler's products convert as they go), past it
    # through float32 (no float16 arithmetic on most CPUs)
    assert product_dtypes(float16.blocks[0].attn.qkv, HALF_MAX_ROWS) == {torch.float16}
    assert product_dtypes(float16.blocks[0].attn.qkv, HALF_MAX_ROWS + 1) == {torch.float32}
    assert product_dtypes(float16.blocks[0].attn.qkv, 0, fixed=16) == {torch.float32}
    step = decode_step.cpu_compiled_step(bf16, 4, compile=True, any_batch=True)
    cache = bf16.new_cache(4)
    with torch.inference_mode():
        token, position = torch.randint(0, 40, (3, 1)), torch.tensor([3, 9, 0])
        expected = bf16.decode_step(token, position, cache.rows(0, 3))
        torch.testing.assert_close(step(token, position, cache.rows(0, 3)), expected, atol=5e-2, rtol=5e-2)


def test_the_compilers_cache_has_a_folder_per_instruction_set(monkeypatch):
    """torch.compile's own cache gets a folder per instruction set ATen runs at, inside PyTorch's
    default (Inductor's key leaves the set out: a natively compiled training step, found again under
    the AVX2 caps, trained to NaN); a TORCHINDUCTOR_CACHE_DIR the user set is kept, PyTorch's own
    default not."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from janelm.device import use_compiler_cache

    for name in ("TORCHINDUCTOR_CACHE_DIR", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    use_compiler_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.join(default_cache_dir(), "avx512")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # PyTorch's own, written once it looked
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    use_compiler_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.join(default_cache_dir(), "avx2-avx2-avx2")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/mine")
    use_compiler_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/mine"


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="a compiled bf16 step uses AMX tiles only where bf16 is native")
def test_a_cached_bf16_step_runs_first_in_a_fresh_process(tmp_path, monkeypatch):
    """A step compiled on an AMX CPU multiplies with tiles, which Linux grants a process only when
    asked: loaded from the cache and run before any other product (a decode from one token), it
    must not die of an illegal instruction."""
    monkeypatch.setenv("JANELM_CACHE", str(tmp_path))
    script = """if True:
        import sys, torch
        from janelm.config import ModelConfig
        from janelm.decode_step import cpu_compiled_step
        from janelm.model import GPT
        from janelm.quantize import inference_weights
        torch.manual_seed(0)
        gpt = GPT(ModelConfig(vocab_size=64, context=32, n_block=1, n_embed=64, n_head=4)).eval()
        model = inference_weights(gpt, "cpu", torch.bfloat16)
        step = cpu_compiled_step(model, 1, compile=sys.argv[1] == "compile")
        assert step is not None, "no compiled step"
        with torch.inference_mode():
            print(step(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long), model.new_cache(1)).shape)
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for how in ("compile", "cached"):  # the second finds the first's library, and runs it before anything else
        run = subprocess.run([sys.executable, "-c", script, how], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0 and run.stdout.strip() == "torch.Size([1, 64])", (how, run.returncode, run.stderr[-500:])
