"""CPU decoding's weight format is measured, not assumed: the fastest floor here is chosen, kept in
the cache folder, and int8 is refused where it measured slower (janelm.precision)."""

import json

import pytest
import torch

import janelm.device as cpu_features
from conftest import decode_floors, janelm
from janelm.config import ModelConfig
from janelm.errors import InputError
from janelm.model import GPT
from janelm.precision import PRECISIONS, fastest_precision, matrix_shapes, measure_floors
from janelm.quantize import HalfLinear, Int8Linear, inference_weights

CONFIG = ModelConfig(vocab_size=64, context=32, n_block=2, n_embed=64, n_head=2)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JANELM_CACHE", str(tmp_path))
    return tmp_path / "precision.json"


def fake_measurements(monkeypatch, floors: dict[str, float], quiet: bool = True) -> list:
    """measure_floors returning `floors`; the list records each call."""
    import janelm.precision

    calls = []
    monkeypatch.setattr(janelm.precision, "measure_floors", lambda shapes: calls.append(shapes) or (dict(floors), quiet))
    return calls


def test_every_format_is_measured_on_this_cpu():
    floors, quiet = measure_floors(matrix_shapes(GPT(CONFIG)), rounds=1, seconds=0.02)
    assert set(floors) == set(PRECISIONS) and all(v > 0 for v in floors.values())
    assert isinstance(quiet, bool)


@pytest.mark.parametrize("fastest, layer, dtype", [("float32", torch.nn.Linear, torch.float32),
                                                   ("float16", HalfLinear, torch.float16),
                                                   ("bfloat16", HalfLinear, torch.bfloat16),
                                                   ("int8", Int8Linear, torch.int8)])
def test_auto_takes_the_fastest_format_measured(cache, monkeypatch, fastest, layer, dtype):
    monkeypatch.setattr(cpu_features, "cpu_has_amx", lambda: False)
    fake_measurements(monkeypatch, {**dict.fromkeys(PRECISIONS, 100.0), fastest: 300.0})
    model = inference_weights(GPT(CONFIG), "cpu", "auto")
    assert isinstance(model.blocks[0].attn.qkv, layer) and model.blocks[0].attn.qkv.weight.dtype == dtype


@pytest.mark.parametrize("fastest", PRECISIONS)
def test_auto_is_bf16_on_an_amx_cpu_whatever_the_eager_floors(cache, monkeypatch, fastest):
    """A compiled step multiplies bf16 on AMX tiles (alone as fast, batched faster), which the
    eager floors do not measure; bench sample says why."""
    from janelm.precision import auto_precision

    monkeypatch.setattr(cpu_features, "cpu_has_amx", lambda: True)
    fake_measurements(monkeypatch, {**dict.fromkeys(PRECISIONS, 100.0), fastest: 300.0})
    model = inference_weights(GPT(CONFIG), "cpu", "auto")
    assert isinstance(model.blocks[0].attn.qkv, HalfLinear) and model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert "AMX" in auto_precision(GPT(CONFIG))[1]


def test_floors_are_measured_once_and_kept(cache, monkeypatch):
    calls = fake_measurements(monkeypatch, {"float32": 1.0, "bfloat16": 2.0, "float16": 3.0, "int8": 0.5})
    assert fastest_precision(GPT(CONFIG)) == "float16"
    assert fastest_precision(GPT(CONFIG)) == "float16"
    assert len(calls) == 1 and cache.is_file()
    other = ModelConfig(vocab_size=64, context=32, n_block=2, n_embed=32, n_head=2)  # other shapes: measured anew
    fastest_precision(GPT(other))
    assert len(calls) == 2 and len(json.loads(cache.read_text())) == 2


def test_a_busy_measurement_fills_a_gap_but_never_replaces_a_quiet_one(cache, monkeypatch):
    from janelm.precision import remember_floors

    shapes = matrix_shapes(GPT(CONFIG))
    quiet = {"float32": 1.0, "bfloat16": 2.0, "float16": 3.0, "int8": 0.5}
    remember_floors(shapes, {**quiet, "float32": 9.0}, quiet=False)
    remember_floors(shapes, quiet, quiet=True)
    remember_floors(shapes, {**quiet, "int8": 99.0}, quiet=False)
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["floors"] == quiet and entry["quiet"] is True


def test_a_cache_folder_that_cannot_be_written_only_means_measuring_again(tmp_path, monkeypatch):
    monkeypatch.setenv("JANELM_CACHE", str(tmp_path / "file"))
    (tmp_path / "file").write_text("not a folder")
    calls = fake_measurements(monkeypatch, {"float32": 1.0, "bfloat16": 2.0, "float16": 3.0, "int8": 0.5})
    assert fastest_precision(GPT(CONFIG)) == "float16" and fastest_precision(GPT(CONFIG)) == "float16"
    assert len(calls) == 2


def test_int8_is_refused_where_it_measured_slower(cache, monkeypatch):
    fake_measurements(monkeypatch, {"float32": 200.0, "bfloat16": 500.0, "float16": 1100.0, "int8": 190.0})
    with pytest.raises(InputError, match=r"int8 is slower than float16 weights on this CPU .*190 tokens/s against 1,100"):
        inference_weights(GPT(CONFIG), "cpu", None, quantize="int8")


def test_int8_is_used_where_it_measured_fastest(cache, monkeypatch):
    fake_measurements(monkeypatch, {"float32": 200.0, "bfloat16": 500.0, "float16": 600.0, "int8": 900.0})
    model = inference_weights(GPT(CONFIG), "cpu", None, quantize="int8")
    assert isinstance(model.blocks[0].attn.qkv, Int8Linear)


def test_sample_takes_the_measured_format_and_int8_is_refused_by_measurement(trained, tmp_path):
    """Through the CLI: the floors kept for this machine decide `--dtype auto`, which then gives the
    text of that format chosen by hand; int8 measured slower than a float format is refused."""
    def sample(env, *flags: str):
        return janelm("sample", "-c", str(trained), "-n", "25", "--seed", "5", "--no-compile", *flags, env=env, check=False)

    env = decode_floors(trained, tmp_path / "a", float32=100.0, bfloat16=300.0, float16=200.0, int8=50.0)
    auto = sample(env)
    assert auto.returncode == 0 and auto.stdout == sample(env, "--dtype", "bfloat16").stdout
    refused = sample(env, "--quantize", "int8")
    assert refused.returncode == 2 and refused.stdout == "" and "Traceback" not in refused.stderr
    assert "int8 is slower than bfloat16 weights on this CPU" in refused.stderr.splitlines()[-1]
    env_int8 = decode_floors(trained, tmp_path / "b", float32=100.0, bfloat16=300.0, float16=200.0, int8=400.0)
    assert sample(env_int8).stdout == sample(env_int8, "--quantize", "int8").stdout
    for env, chosen in ((env, "bfloat16"), (env_int8, "int8")):
        bench = json.loads(janelm("bench", "sample", "-c", str(trained), "--steps", "5", "--no-compile", "--json",
                                  env=env).stdout)
        assert bench["dtype"] == chosen and bench["why"].startswith("the fastest format measured")
