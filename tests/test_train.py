"""Training loop: learning, exact resume, EMA, warm-up, clipping, NaN guard, outputs, bad data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ddpm_ref.checkpoint import load_checkpoint
from ddpm_ref.config import apply_overrides, get_config
from ddpm_ref.data import DataFileError, load_sample
from ddpm_ref.train import NonFiniteLossError, Trainer, load_images, train, warmup_lr

pytestmark = pytest.mark.usefixtures("one_thread")


def images16(n: int | None = None) -> np.ndarray:
    """The shipped training sample, 2x2-average-pooled to 16x16 uint8 (for the 16x16 test model)."""
    x = load_sample("train")[0][:n]
    return x.reshape(-1, 16, 2, 16, 2, 3).astype(np.float64).mean(axis=(2, 4)).round().astype(np.uint8)


def small_config(*extra: str):
    """A seconds-scale recipe: the 16x16 'tiny16' U-Net, T = 100, batch 8, log every step."""
    base = [
        "model.unet=tiny16", "train.batch_size=8", "diffusion.num_timesteps=100", "train.log_every=1",
        "train.sample_every=0", "train.checkpoint_every=1000", "train.keep_every=0", "optim.warmup_steps=5",
        "train.total_steps=6",
    ]  # fmt: skip
    return apply_overrides(get_config("tiny"), base + list(extra))


def _trainer(cfg, out, **kw):
    kw.setdefault("images", images16(256))
    kw.setdefault("progress", False)
    kw.setdefault("tensorboard", False)
    kw.setdefault("device", "cpu")
    return Trainer(cfg, out, **kw)


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ schedule
def test_warmup_lr_matches_the_original():
    # original get_warmed_up_lr: lr * min(global_step / warmup, 1) with global_step 0 at the first update
    assert warmup_lr(0, 2e-4, 5000) == 0.0
    assert warmup_lr(2500, 2e-4, 5000) == pytest.approx(1e-4)
    assert warmup_lr(5000, 2e-4, 5000) == 2e-4 and warmup_lr(10**6, 2e-4, 5000) == 2e-4
    assert warmup_lr(0, 2e-4, 0) == 2e-4


def test_logged_lr_follows_warmup(tmp_path):
    cfg = small_config("train.total_steps=7", "optim.lr=1e-3", "optim.warmup_steps=4")
    hist = train(cfg, tmp_path, images=images16(64), progress=False, tensorboard=False, device="cpu").history
    assert [h["lr"] for h in hist] == [warmup_lr(s, 1e-3, 4) for s in range(7)]


# ------------------------------------------------------------------------------------------ learning
def test_loss_decreases_on_the_shipped_sample(tmp_path):
    cfg = small_config("train.total_steps=60", "train.batch_size=16", "optim.lr=1e-3", "optim.warmup_steps=10")
    hist = _trainer(cfg, tmp_path, images=images16()).fit()
    losses = np.array([h["loss"] for h in hist])
    assert len(losses) == 60 and np.isfinite(losses).all()
    first, last = losses[:10].mean(), losses[-10:].mean()
    # at initialisation eps_theta ~ 0 (conv_out starts near zero), so L_simple ~ E|eps|^2 = 1
    assert 0.8 < first < 1.1
    assert last < 0.5 * first, (first, last)


@pytest.mark.slow
def test_tiny_preset_learns_on_the_shipped_sample(tmp_path):
    cfg = apply_overrides(get_config("tiny"), ["train.total_steps=200", "train.sample_every=0"])
    hist = train(cfg, tmp_path, progress=False, device="cpu").history
    losses = [h["loss"] for h in hist]  # one record per 20 steps (mean over the window)
    assert losses[-1] < 0.5 * losses[0], losses


def test_paper_config_runs_two_steps_at_batch_2(tmp_path):
    cfg = apply_overrides(get_config("cifar10"), ["train.batch_size=2", "train.total_steps=2"])
    tr = _trainer(cfg, tmp_path, images=load_sample("train")[0][:32])
    assert tr.num_params == 35_746_307
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.train_step()
    # the first update has lr 0 (warm-up from 0, as the original): Adam's moments move, the weights do not
    assert all(torch.equal(a, b) for a, b in zip(tr.model.parameters(), before, strict=True))
    tr.train_step()
    tr._drain()
    assert tr.step == 2 and len(tr._window) == 2
    assert all(math.isfinite(w[1]) and w[1] > 0 for w in tr._window)
    assert tr._window[0][3] == 0.0 and tr._window[1][3] == pytest.approx(2e-4 / 5000)
    moved = max(float((a.detach() - b).abs().max()) for a, b in zip(tr.model.parameters(), before, strict=True))
    assert 0 < moved < 1e-6  # an Adam step of lr 4e-8 (times a bounded ratio), not a jump
    ema_gap = max(float((a - b.detach()).abs().max()) for a, b in zip(tr.ema.parameters(), tr.model.parameters(),
                                                                        strict=True))
    assert ema_gap < 1e-6  # EMA = theta_1 after step 1, then 0.9999 theta_1 + 0.0001 theta_2


# ------------------------------------------------------------------------------------------ EMA, clipping
def test_ema_recurrence(tmp_path):
    cfg = small_config("train.ema_decay=0.9", "optim.warmup_steps=0")
    tr = _trainer(cfg, tmp_path)
    expected = None
    for _ in range(4):
        tr.train_step()
        params = [p.detach().double().clone() for p in tr.model.parameters()]
        # first update copies theta (the original's decay 1e-10 at step 0), then the usual recurrence
        expected = params if expected is None else [0.9 * e + 0.1 * p for e, p in zip(expected, params, strict=True)]
    for e, p in zip(expected, tr.ema.parameters(), strict=True):
        torch.testing.assert_close(p.double(), e, rtol=1e-6, atol=1e-7)
        assert p.dtype == torch.float32 and not p.requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(tr.ema.parameters(), tr.model.parameters(), strict=True))


def test_gradient_clipping_reports_the_norm_before_clipping(tmp_path):
    tr = _trainer(small_config("optim.grad_clip=0.5"), tmp_path)
    g = torch.Generator().manual_seed(0)
    for p in tr.model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    norm_before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in tr.model.parameters()]))
    reported = tr._clip_gradients()
    torch.testing.assert_close(reported, norm_before)
    norm_after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in tr.model.parameters()]))
    assert norm_after == pytest.approx(0.5, rel=1e-4)
    tr2 = _trainer(small_config("optim.grad_clip=0"), tmp_path / "b")
    for p in tr2.model.parameters():
        p.grad = torch.ones_like(p)
    assert float(tr2._clip_gradients()) == pytest.approx(math.sqrt(tr2.num_params), rel=1e-5)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in tr2.model.parameters())  # no clipping


# ------------------------------------------------------------------------------------------ resume
def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    cfg = small_config("train.total_steps=6", "model.dropout=0.1")  # dropout: global RNG must be restored
    a = _trainer(cfg, tmp_path / "a")
    a.fit()
    a.close()
    b = _trainer(cfg, tmp_path / "b")
    b.fit(stop_at=3)
    b.close()
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["step"] == 3
    b2 = _trainer(None, tmp_path / "b", resume="auto")
    assert b2.step == 3
    b2.fit()
    b2.close()
    ma, mb = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert [m["step"] for m in mb] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(ma, mb, strict=True):  # every logged loss, grad norm, lr: bit for bit
        assert (ra["loss"], ra["grad_norm"], ra["lr"]) == (rb["loss"], rb["grad_norm"], rb["lr"])
    for pa, pb in zip(a.model.parameters(), b2.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    for pa, pb in zip(a.ema.parameters(), b2.ema.parameters(), strict=True):
        assert torch.equal(pa, pb)
    sa, sb = a.optimizer.state_dict()["state"], b2.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    assert a.stream.state_dict() == b2.stream.state_dict()
    assert torch.equal(a.generator.get_state(), b2.generator.get_state())


def test_resume_after_a_crash_drops_logs_past_the_checkpoint(tmp_path):
    cfg = small_config("train.total_steps=5", "train.checkpoint_every=2")
    tr = _trainer(cfg, tmp_path)
    tr.fit(stop_at=3)  # checkpoints at 2 and 3 (the stop)
    # pretend the process died after logging step 5 but before checkpointing it
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "loss": 123.0}) + "\n" + json.dumps({"step": 5, "loss": 456.0}) + "\n")
    tr2 = _trainer(None, tmp_path, resume=tmp_path / "checkpoints" / "last.pt")
    tr2.fit()
    steps = [m["step"] for m in _metrics(tmp_path)]
    assert steps == [1, 2, 3, 4, 5] and 123.0 not in [m["loss"] for m in _metrics(tmp_path)]


def test_resume_guards(tmp_path):
    cfg = small_config("train.total_steps=2")
    _trainer(cfg, tmp_path).fit()
    with pytest.raises(ValueError, match="already holds a run"):
        _trainer(cfg, tmp_path)
    with pytest.raises(ValueError, match=r"changed recipe: \['optim.lr'\]"):
        _trainer(apply_overrides(cfg, ["optim.lr=1e-2"]), tmp_path, resume="auto")
    # extending the run is allowed
    tr = _trainer(None, tmp_path, resume="auto", overrides=["train.total_steps=3"])
    assert tr.step == 2 and tr.config.train.total_steps == 3
    tr.fit()
    assert tr.step == 3
    # --resume without a checkpoint starts a new run
    fresh = _trainer(cfg, tmp_path / "new", resume="auto")
    assert fresh.step == 0


# ------------------------------------------------------------------------------------------ NaN guard
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = small_config("train.total_steps=10", "train.checkpoint_every=2")
    tr = _trainer(cfg, tmp_path)
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1  # one forward per training step
        return output * float("nan") if calls["n"] == 5 else output

    tr.model.conv_out.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at step 5 .*last good checkpoint .*step 4"):
        tr.fit()
    ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ck["step"] == 4
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert all(torch.isfinite(v).all() for v in ck["ema"].values())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt"]
    with pytest.raises(NonFiniteLossError, match="refusing to checkpoint"):
        tr.save_checkpoint()
    # the run can be resumed from the kept checkpoint
    assert _trainer(None, tmp_path, resume="auto").step == 4


def test_non_finite_gradient_stops(tmp_path):
    cfg = small_config("train.total_steps=6", "train.checkpoint_every=1")
    tr = _trainer(cfg, tmp_path)
    w = tr.model.conv_in.weight
    w.register_hook(lambda g: g * float("inf") if tr.step == 2 else g)  # during the 3rd update
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm (inf|nan) \(loss .*\) at step 3"):
        tr.fit()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 2


# ------------------------------------------------------------------------------------------ outputs
def test_outputs_tensorboard_samples_checkpoints(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = small_config(
        "train.total_steps=4", "train.log_every=2", "train.sample_every=2", "train.num_samples=4",
        "train.sample_timesteps=5", "train.checkpoint_every=2", "train.keep_every=4",
    )
    tr = _trainer(cfg, tmp_path, tensorboard=True)
    tr.fit()
    tr.close()
    assert json.loads((tmp_path / "config.json").read_text())["train"]["total_steps"] == 4
    m = _metrics(tmp_path)
    assert [r["step"] for r in m] == [2, 4] and all(r["num_steps"] == 2 for r in m)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt", "step_0000004.pt"]
    ck = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == 4 and ck["config"]["train"]["total_steps"] == 4 and ck["world_size"] == 1
    assert set(ck["rng"][0]) == {"torch", "cuda", "numpy", "python"}
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/grad_norm", "train/lr"} <= set(tags["scalars"])
    assert "samples/ema" in tags["images"]
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4]
    assert acc.Scalars("train/loss")[1].value == pytest.approx(m[1]["loss"], rel=1e-6)


def test_sample_grid_uses_fixed_noise(tmp_path):
    tr = _trainer(small_config("train.sample_timesteps=4", "train.num_samples=3"), tmp_path)
    a = tr.sample_grid()
    b = tr.sample_grid()
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


@pytest.mark.parametrize("opts", [{"bf16": True}, {"channels_last": True}, {"bf16": True, "channels_last": True}])
def test_speed_options_run_on_cpu(tmp_path, opts):
    tr = _trainer(small_config("train.total_steps=3"), tmp_path, **opts)
    hist = tr.fit()
    assert len(hist) == 3 and all(math.isfinite(h["loss"]) for h in hist)
    if opts.get("channels_last"):
        assert tr.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 for p in tr.ema.parameters())


def test_deterministic_mode_runs_and_matches(tmp_path):
    cfg = small_config("train.total_steps=3")
    ref = _trainer(cfg, tmp_path / "a").fit()
    try:
        tr = _trainer(cfg, tmp_path / "b", deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        hist = tr.fit()
    finally:
        torch.use_deterministic_algorithms(False)
    assert [h["loss"] for h in hist] == [h["loss"] for h in ref]  # CPU kernels are deterministic anyway


@pytest.mark.slow
def test_torch_compile_runs_on_cpu(tmp_path):
    tr = _trainer(small_config("train.total_steps=2"), tmp_path, compile=True)
    hist = tr.fit()
    assert len(hist) == 2 and all(math.isfinite(h["loss"]) for h in hist)


# ------------------------------------------------------------------------------------------ bad data
def test_load_images_specs(tmp_path):
    x, info = load_images("sample")
    assert x.shape == (1024, 32, 32, 3) and info["pixel_exact"] and info["split"] == "train"
    x, info = load_images("sample:test")
    assert x.shape == (256, 32, 32, 3) and info["split"] == "test"
    np.savez(tmp_path / "d.npz", x_train=images16(10), other=np.zeros(3))
    x, _ = load_images(f"npz:{tmp_path / 'd.npz'}", image_size=16)
    assert x.shape == (10, 16, 16, 3)
    x, _ = load_images(f"npz:{tmp_path / 'd.npz'}:x_train")
    assert x.shape[0] == 10


def test_bad_data_gives_clear_errors(tmp_path):
    from PIL import Image

    with pytest.raises(ValueError, match="unknown data spec"):
        load_images("imagenet:/data")
    with pytest.raises(ValueError, match="needs the directory"):
        load_images("cifar10:")
    with pytest.raises(DataFileError, match="CIFAR-10 not found under"):
        load_images(f"cifar10:{tmp_path / 'nothing'}")
    with pytest.raises(ValueError, match="image folder not found"):
        load_images(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "big" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "big" / "cat" / "a.png")
    with pytest.raises(DataFileError, match="64x64 .*expected 32x32"):
        load_images(f"folder:{tmp_path / 'big'}", image_size=32)
    with pytest.raises(ValueError, match="npz file not found"):
        load_images(f"npz:{tmp_path / 'none.npz'}")
    np.savez(tmp_path / "f.npz", x_train=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"f\.npz\[x_train\]: is float32 \[2, 8, 8, 3\]; expected uint8"):
        load_images(f"npz:{tmp_path / 'f.npz'}")
    np.savez(tmp_path / "s.npz", x_train=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="are 8x8, but the model expects 32x32"):
        load_images(f"npz:{tmp_path / 's.npz'}", image_size=32)
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        load_images("sample:valid")


def test_trainer_rejects_mismatched_images(tmp_path):
    with pytest.raises(ValueError, match="training images are 32x32 but the model expects 16x16"):
        _trainer(small_config(), tmp_path, images=load_sample("train")[0][:16])
    with pytest.raises(ValueError, match="uint8"):
        _trainer(small_config(), tmp_path, images=np.zeros((4, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="data spec"):
        Trainer(apply_overrides(small_config(), ["data=nowhere"]), tmp_path, progress=False, device="cpu")
    with pytest.raises(ValueError, match="unknown device"):
        _trainer(small_config(), tmp_path, device="tpu")


# ------------------------------------------------------------------------------------------ signals
_SIG_STEPS = 20


def _sig_cli(out, *extra, data):
    import os
    import subprocess
    import sys

    argv = [sys.executable, "-m", "ddpm_ref", "train", "--config", "tiny", "--data", f"npz:{data}", "--out", str(out),
            "--set", "model.unet=tiny16", "--set", "diffusion.num_timesteps=100", "--set", "train.batch_size=8",
            "--set", "train.log_every=1", "--set", "train.sample_every=0", "--set", "train.checkpoint_every=1000",
            "--set", "optim.warmup_steps=5", "--set", "model.dropout=0.1", "--steps", str(_SIG_STEPS),
            "--no-tensorboard", "--no-progress", "--device", "cpu", "--threads", "1", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sig")
    np.savez(tmp / "img16.npz", x_train=images16(256))
    proc = _sig_cli(tmp / "ref", data=tmp / "img16.npz")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return tmp, _metrics(tmp / "ref"), load_checkpoint(tmp / "ref" / "checkpoints" / "last.pt")


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_resume_is_exact(uninterrupted, tmp_path, signame):
    """A real SIGINT (Ctrl-C) or SIGTERM (a cluster's preemption) before the first scheduled checkpoint:
    the run writes one at the current step, says where, exits 128 + signal; the same command plus
    --resume ends bit for bit where the uninterrupted run ended (losses, weights, EMA, Adam, RNG)."""
    import signal
    import time

    tmp, ref_metrics, ref = uninterrupted
    sig = getattr(signal, signame)
    run = tmp_path / "run"
    proc = _sig_cli(run, data=tmp / "img16.npz")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        log = run / "metrics.jsonl"
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted by {signame} at step ") and str(run / "checkpoints" / "last.pt") in last
    assert "--resume" in last and "Traceback" not in err
    step = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 3 <= step < _SIG_STEPS and f"at step {step}:" in last
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the atomic write left no temporary file
    proc = _sig_cli(run, "--resume", data=tmp / "img16.npz")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    got = _metrics(run)
    assert [m["step"] for m in got] == list(range(1, _SIG_STEPS + 1))
    for a, b in zip(ref_metrics, got, strict=True):
        assert (a["loss"], a["grad_norm"], a["lr"]) == (b["loss"], b["grad_norm"], b["lr"])
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    for key in ("model", "ema"):
        assert all(torch.equal(ref[key][k], ck[key][k]) for k in ref[key])
    sa, sb = ref["optimizer"]["state"], ck["optimizer"]["state"]
    assert all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    assert torch.equal(ref["generator"], ck["generator"]) and ref["data_stream"] == ck["data_stream"]


def test_resume_a_run_that_has_only_its_config(tmp_path):
    """--resume on a folder with config.json and no checkpoint starts from that config (step 0);
    without --resume such a folder is refused (a run in progress), --force starts over."""
    from ddpm_ref.config import save_config
    from ddpm_ref.errors import UsageError

    cfg = small_config("train.total_steps=2")
    save_config(cfg, tmp_path / "config.json")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')  # from the lost attempt
    with pytest.raises(UsageError, match="has not written a checkpoint yet.*--resume.*--force"):
        _trainer(cfg, tmp_path)
    tr = _trainer(None, tmp_path, resume="auto")
    assert tr.step == 0 and tr.config == cfg
    tr.fit()
    assert [m["step"] for m in _metrics(tmp_path)] == [1, 2] and 9.0 not in [m["loss"] for m in _metrics(tmp_path)]
    save_config(cfg, tmp_path / "y" / "config.json")
    with pytest.raises(UsageError, match=r"changed recipe: \['optim.lr'\]"):
        _trainer(apply_overrides(cfg, ["optim.lr=1"]), tmp_path / "y", resume="auto")
    forced = _trainer(cfg, tmp_path / "y", force=True)
    assert forced.step == 0


def test_batch_size_is_checked_against_data_and_memory(tmp_path, monkeypatch):
    from ddpm_ref import _resources
    from ddpm_ref.errors import UsageError

    with pytest.raises(UsageError, match=r"--batch-size\) 512: larger than the 256 training images"):
        _trainer(small_config("train.batch_size=512"), tmp_path)
    monkeypatch.setattr(_resources, "available_memory", lambda device: 10 * 2**20)
    with pytest.raises(UsageError, match=r"needs about .* but only 10\.0 MB of memory is available"):
        _trainer(small_config("train.batch_size=64"), tmp_path)


def test_training_memory_estimate_is_close_to_the_measured_peak():
    """The meta-device estimate of a training step's activations scales with the batch and is of the
    right size: for the 'tiny' U-Net about 11 MB per 32x32 image (measured: 765 MB at batch 64)."""
    from ddpm_ref._resources import training_memory_estimate
    from ddpm_ref.config import get_config

    kw = get_config("tiny").unet_kwargs()
    one, many = training_memory_estimate(kw, 1), training_memory_estimate(kw, 65)
    per_image = (many - one) / 64
    assert 8 * 2**20 < per_image < 16 * 2**20
