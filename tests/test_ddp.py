"""DDP on CPU (gloo) through the real launcher: ``torchrun --nproc_per_node=2 -m ddpm_ref train``.

Two processes with half of every global batch each must make the same updates as one process
with the whole batch (dropout 0: dropout masks are per rank), up to float rounding of the
gradient all-reduce; the checkpoint of the 2-process run must resume in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from ddpm_ref.checkpoint import load_checkpoint
from ddpm_ref.config import apply_overrides, get_config, save_config
from ddpm_ref.data import load_sample
from ddpm_ref.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _setup(tmp_path, steps=4, batch=8):
    x = load_sample("train")[0][:128]
    x16 = x.reshape(-1, 16, 2, 16, 2, 3).astype(np.float64).mean(axis=(2, 4)).round().astype(np.uint8)
    np.savez(tmp_path / "data.npz", x_train=x16)
    cfg = apply_overrides(get_config("tiny"), [
        "model.unet=tiny16", "model.dropout=0", f"train.batch_size={batch}", "diffusion.num_timesteps=100",
        "train.log_every=1", "train.sample_every=0", "train.checkpoint_every=1000", "train.keep_every=0",
        "optim.warmup_steps=2", f"train.total_steps={steps}", f"data=npz:{tmp_path / 'data.npz'}",
    ])  # fmt: skip
    save_config(cfg, tmp_path / "cfg.json")
    return cfg


def _torchrun(tmp_path, out, *extra, nproc=2):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "ddpm_ref", "train", "--config", str(tmp_path / "cfg.json"), "--out", str(out),
        "--device", "cpu", "--no-progress", "--no-tensorboard", *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)


def test_two_process_gloo_run_equals_one_process(tmp_path):
    cfg = _setup(tmp_path, steps=4)
    proc = _torchrun(tmp_path, tmp_path / "ddp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) x 4 = global batch 8" in proc.stdout + proc.stderr

    single = Trainer(cfg, tmp_path / "one", device="cpu", progress=False, tensorboard=False)
    theta0 = {k: v.clone() for k, v in single.model.state_dict().items()}
    single.fit()
    single.close()
    other = Trainer(apply_overrides(cfg, ["train.seed=1"]), tmp_path / "other", device="cpu", progress=False,
                    tensorboard=False)
    other.fit()
    other.close()

    ck = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert ck["step"] == 4 and ck["world_size"] == 2 and len(ck["rng"]) == 2
    # each rank seeds its own dropout generator
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])

    def flat(sd):
        return torch.cat([sd[k].flatten().double() for k in theta0])

    t0, ddp, one = flat(theta0), flat(ck["model"]), flat(single.model.state_dict())
    # The updates agree to float rounding. (Adam divides by sqrt(v): the few weights whose gradient is
    # pure cancellation noise at this early stage can move differently, so compare the whole update
    # and the fraction of weights that match to 1e-6, not every single weight.)
    upd_err = float((ddp - one).norm() / (one - t0).norm())
    assert upd_err < 1e-3, upd_err
    close = torch.isclose(ddp, one, rtol=1e-4, atol=2e-6).double().mean()
    assert close > 0.9995, float(close)
    # control: a run on different batches (seed 1) is far away on the same scale
    assert float((flat(other.model.state_dict()) - one).norm() / (one - t0).norm()) > 0.1
    ema_ddp, ema_one = flat(ck["ema"]), flat(single.ema.state_dict())
    assert float((ema_ddp - ema_one).norm() / (ema_one - t0).norm()) < 1e-3
    # the logged loss is the mean over ranks = the global-batch mean
    ddp_log = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    one_log = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ddp_log] == [1, 2, 3, 4]
    for a, b in zip(ddp_log, one_log, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["lr"] == b["lr"]
    # the data order / t / noise state does not depend on the process count
    assert ck["data_stream"] == single.stream.state_dict()
    assert torch.equal(ck["generator"], single.generator.get_state())

    # the 2-process checkpoint resumes in 1 process (dropout re-seeded: a warning says so)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        resumed = Trainer(None, tmp_path / "ddp", device="cpu", progress=False, tensorboard=False,
                          resume="auto", overrides=["train.total_steps=5"])
    assert any("written by 2 process(es)" in str(m.message) for m in w)
    resumed.fit()
    longer = Trainer(apply_overrides(cfg, ["train.total_steps=5"]), tmp_path / "one5", device="cpu",
                     progress=False, tensorboard=False)
    longer.fit()
    res, ref = flat(resumed.model.state_dict()), flat(longer.model.state_dict())
    assert float((res - ref).norm() / (ref - t0).norm()) < 1e-3


def test_global_batch_must_divide_by_world_size(tmp_path, monkeypatch):
    """Checked before any collective (so every rank fails fast with the same message)."""
    import ddpm_ref.train as train_mod

    cfg = _setup(tmp_path, steps=2, batch=3)
    monkeypatch.setattr(train_mod, "init_distributed",
                        lambda device: (train_mod.DistInfo(rank=1, world_size=2), torch.device("cpu")))
    with pytest.raises(ValueError, match=r"train.batch_size=3 is not divisible by the number of processes \(2\)"):
        Trainer(cfg, tmp_path / "bad", device="cpu", progress=False, tensorboard=False)


@pytest.mark.slow  # two more torchrun launches
def test_sampling_and_bpd_under_torchrun_equal_one_process(tmp_path):
    """Batches are dealt round-robin to the ranks and seeded by their index: the merged result is
    the single-process result (bit for bit here: same CPU kernels, one thread per process)."""
    from ddpm_ref.evaluate import evaluate_bpd, generate_samples, load_model

    cfg = _setup(tmp_path, steps=1)
    tr = Trainer(apply_overrides(cfg, ["diffusion.num_timesteps=10"]), tmp_path / "run", device="cpu",
                 progress=False, tensorboard=False)
    tr.fit()
    tr.close()
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddpm_ref"]
    common = ["--checkpoint", str(ckpt), "--batch-size", "2", "--device", "cpu", "--no-progress"]
    proc = subprocess.run([*base, "sample", *common, "--num-samples", "5", "--out", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([*base, "evaluate", *common, "--data", f"npz:{tmp_path / 'data.npz'}", "--split", "train",
                           "--num-images", "5", "--out", str(tmp_path / "e")],
                          capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    model, diffusion, _, _ = load_model(ckpt)
    with np.load(tmp_path / "s" / "samples.npz") as f:
        assert np.array_equal(f["images"], generate_samples(model, diffusion, 5, batch_size=2, progress=False))
    one = evaluate_bpd(model, diffusion, np.load(tmp_path / "data.npz")["x_train"][:5], batch_size=2, progress=False)
    two = json.loads((tmp_path / "e" / "bpd.json").read_text())
    assert two["num_images"] == 5 and two["bpd"] == pytest.approx(one["bpd"], rel=1e-12)
