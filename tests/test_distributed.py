"""Two-process DDP on the CPU (gloo): one set of outputs, the same samples and losses as one process."""

import csv
import os

import pytest

from conftest import TINY, janelm

# --device cpu: this is the gloo path, also on a machine with a GPU.
STEPS = ["--max-iters", "20", "--eval-interval", "5", "--save-interval", "10", "--seed", "4", "--device", "cpu"]


def losses(run):
    with open(run / "metrics.csv", newline="") as f:
        return [(int(r["step"]), int(r["tokens"]), float(r["train_loss"]), float(r["val_loss"])) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, prepared):
    one, two = tmp_path / "one", tmp_path / "two"
    # Same global batch: 1 process × 2 accumulated micro-batches of 4 = 2 processes × 4.
    janelm("train", "--data", str(prepared), "--out", str(one), *TINY, *STEPS, "--batch-size", "4", "--grad-accum", "2")
    proc = janelm("train", "--nproc", "2", "--data", str(prepared), "--out", str(two), *TINY, *STEPS,
                  "--batch-size", "4", "--grad-accum", "1", timeout=600)
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))  # one set of checkpoints and metrics
    a, b = losses(one), losses(two)
    assert [r[:2] for r in a] == [r[:2] for r in b]  # same steps, same tokens seen
    for ra, rb in zip(a, b):
        assert rb[2] == pytest.approx(ra[2], rel=1e-4) and rb[3] == pytest.approx(ra[3], rel=1e-4)
    assert proc.stderr.count("model:") <= 1  # only rank 0 talks


def test_more_processes_than_gpus_is_refused_before_starting(monkeypatch):
    import torch

    from janelm.distributed import check_cuda_ranks
    from janelm.errors import InputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_cuda_ranks(1)
    with pytest.raises(InputError, match=r"2 processes need 2 GPUs, but this machine has 1: use --nproc 1 .*--device cpu"):
        check_cuda_ranks(2)
