"""``python -m ddpm_ref``: help texts, clear errors, and train -> resume -> sample -> evaluate -> convert."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpm_ref.__main__ import main
from ddpm_ref.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "ddpm_ref", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_module_help_runs_as_a_program(tmp_path):
    out = _cli("--help", cwd=tmp_path)
    for cmd in ("train", "sample", "evaluate", "fid-stats", "convert"):
        assert cmd in out


@pytest.mark.parametrize(
    "cmd, expected",
    [
        ("train", ["--config", "--data", "--out", "--resume", "--set", "--bf16", "--compile", "torchrun",
                   "cifar10:<root>", "--channels-last", "--stop-at"]),
        ("sample", ["--checkpoint", "--num-samples", "--sampler", "--steps", "--eta", "samples.npz", "EMA"]),
        ("evaluate", ["--metric", "bpd", "fid", "--split", "--ref-stats", "--ref-data", "--num-images"]),
        ("fid-stats", ["--data", "--split", "pixel-exact"]),
        ("convert", ["source", "--out", "diffusers", "pytorch_diffusion", "--no-ema"]),
    ],
)
def test_subcommand_help(cmd, expected, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for word in expected:
        assert word in text, (cmd, word)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--config", "imagenet", "--out", "{tmp}/r"], "unknown config"),
        (["train", "--config", "tiny", "--data", "webdataset:x", "--out", "{tmp}/r"], "unknown data spec"),
        (["train", "--config", "tiny", "--data", "folder:{tmp}/missing", "--out", "{tmp}/r"], "image folder not found"),
        (["train", "--config", "tiny", "--data", "cifar10:{tmp}/nope", "--out", "{tmp}/r"], "CIFAR-10 not found under"),
        (["train", "--config", "tiny", "--set", "optim.learning_rate=1", "--out", "{tmp}/r"], "unknown field"),
        (["train", "--config", "tiny", "--set", "model.dropout=2", "--out", "{tmp}/r"], "model.dropout: must be"),
        (["train", "--config", "tiny", "--device", "cuda", "--out", "{tmp}/r"], "CUDA is not available"),
        (["train", "--config", "{tmp}/missing.json", "--out", "{tmp}/r"], "config file not found"),
        (["sample", "--checkpoint", "{tmp}/none.pt", "--out", "{tmp}/s"], "checkpoint not found"),
        (["sample", "--checkpoint", "{tmp}/none.pt", "--out", "{tmp}/s", "--sampler", "ddim"], "needs --steps"),
        (["evaluate", "--out", "{tmp}/e"], "needs --checkpoint"),
        (["evaluate", "--checkpoint", "{tmp}/c.pt", "--bf16"], "bits/dim are computed in float32"),
        (["evaluate", "--metric", "fid", "--samples", "{tmp}/s.npz"], "exactly one of --ref-stats or --ref-data"),
        (["evaluate", "--metric", "fid", "--checkpoint", "{tmp}/c.pt", "--ref-stats", "{tmp}/r.npz", "--sampler",
          "ode", "--steps", "5"], "--steps with --sampler ode"),
        (["evaluate", "--metric", "fid", "--checkpoint", "{tmp}/c.pt", "--ref-stats", "{tmp}/r.npz", "--eta", "0.5"],
         "--eta: applies to --sampler ddim only"),
        (["evaluate", "--metric", "fid", "--checkpoint", "{tmp}/c.pt", "--ref-stats", "{tmp}/r.npz", "--rtol", "1e-3"],
         "--rtol with --sampler ancestral"),
        (["evaluate", "--metric", "fid", "--samples", "{tmp}/s.npz", "--ref-stats", "{tmp}/r.npz", "--atol", "1e-3"],
         "--atol: generates samples, but --samples gives them"),
        (["evaluate", "--checkpoint", "{tmp}/c.pt", "--sampler", "ode"], "an FID option; it does not apply"),
        (["fid-stats", "--data", "folder:{tmp}/missing", "--out", "{tmp}/x.npz"], "image folder not found"),
        (["convert", "{tmp}/none.bin", "--out", "{tmp}/m.safetensors"], "does not exist"),
    ],
)
def test_bad_arguments_give_clear_errors(tmp_path, capsys, argv, message):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv] + (["--no-progress"] if argv[0] != "convert" else []))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_argparse_errors_exit_2_with_one_line(capsys):
    for argv in (["bogus"], ["sample", "--out", "x"], ["train", "--out", "x", "--threads", "0"],
                 ["evaluate", "--batch-size", "0"],
                 ["sample", "--checkpoint", "c", "--out", "o", "--num-samples", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, (argv, err)
        assert "--help" in err
    assert main(["train"]) == 2  # --out is needed unless --print-config
    assert capsys.readouterr().err.startswith("error: --out: required")


def test_print_config(capsys):
    assert main(["train", "--config", "tiny", "--lr", "3e-4", "--set", "model.dropout=0",
                 "--print-config"]) == 0  # no --out needed
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 3e-4 and cfg["model"]["dropout"] == 0.0 and cfg["model"]["unet"] == "tiny"


COMMON = ["--device", "cpu", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``python -m ddpm_ref train`` in a subprocess: tiny config, T = 50, 4 steps at batch 4."""
    tmp = tmp_path_factory.mktemp("cli")
    run = tmp / "run"
    out = _cli("train", "--config", "tiny", "--data", "sample", "--out", run, "--steps", "4", "--batch-size", "4",
               "--set", "diffusion.num_timesteps=50", "--set", "train.log_every=1", "--set", "train.sample_every=4",
               "--set", "train.num_samples=4", *COMMON, cwd=tmp)
    return tmp, run, out


def test_train_sample_evaluate_end_to_end(cli_run):
    tmp, run, out = cli_run
    assert "done: step 4" in out
    assert (run / "samples" / "step_0000004.png").is_file() and (run / "tb").is_dir()
    ckpt = run / "checkpoints" / "last.pt"
    assert load_checkpoint(ckpt)["config"]["diffusion"]["num_timesteps"] == 50

    _cli("sample", "--checkpoint", ckpt, "--out", tmp / "samples", "--num-samples", "3", "--batch-size", "2", *COMMON,
         cwd=tmp)
    with np.load(tmp / "samples" / "samples.npz") as f:
        images, meta = f["images"], json.loads(str(f["meta"]))
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert meta["checkpoint"]["weights"] == "ema" and meta["steps"] == 50
    assert (tmp / "samples" / "samples.png").is_file()

    out = _cli("evaluate", "--checkpoint", ckpt, "--data", "sample", "--split", "test", "--num-images", "3",
               "--batch-size", "2", "--out", tmp / "eval", *COMMON, cwd=tmp)
    assert "bits/dim" in out
    res = json.loads((tmp / "eval" / "bpd.json").read_text())
    assert res["num_images"] == 3 and res["num_timesteps"] == 50 and res["data"]["split"] == "test"
    assert res["bpd"] == pytest.approx(res["prior_bpd"] + res["decoder_bpd"] + res["kl_bpd"], rel=1e-9)
    assert 0 < res["bpd"] < 100 and res["checkpoint"]["step"] == 4
    with np.load(tmp / "eval" / "bpd.npz") as f:
        assert f["t_terms_bpd"].shape == (50,)


def test_resume_and_convert_through_main(cli_run, tmp_path, capsys):
    import shutil

    _, src, _ = cli_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    # an existing run is not overwritten by accident
    assert main(["train", "--config", "tiny", "--out", str(run), *COMMON]) == 2
    assert "already holds a run" in capsys.readouterr().err
    # extend the run: the recipe comes from the checkpoint, only the length changes
    assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--no-tensorboard", *COMMON]) == 0
    assert "done: step 6" in capsys.readouterr().out
    ckpt = run / "checkpoints" / "last.pt"
    assert load_checkpoint(ckpt)["step"] == 6
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    # changing the recipe on resume is refused
    assert main(["train", "--out", str(run), "--resume", "--lr", "1", *COMMON]) == 2
    assert "changed recipe" in capsys.readouterr().err

    # export the EMA weights; sampling from the converted file with the run's recipe gives the same images
    assert main(["convert", str(ckpt), "--out", str(tmp_path / "ema.safetensors")]) == 0
    assert "702,499 parameters" in capsys.readouterr().out
    a = ["sample", "--num-samples", "2", "--batch-size", "2", "--steps", "5", *COMMON]
    assert main([*a, "--checkpoint", str(ckpt), "--out", str(tmp_path / "s1")]) == 0
    assert main([*a, "--checkpoint", str(tmp_path / "ema.safetensors"), "--config", str(run / "config.json"),
                 "--out", str(tmp_path / "s2")]) == 0
    with np.load(tmp_path / "s1" / "samples.npz") as f1, np.load(tmp_path / "s2" / "samples.npz") as f2:
        assert f1["images"].shape == (2, 32, 32, 3) and np.array_equal(f1["images"], f2["images"])
    capsys.readouterr()


def test_fid_stats_and_fid_through_main(tmp_path, capsys, toy_feature_net):
    """The FID commands end to end, with a small TorchScript stand-in for Inception (fast)."""
    from ddpm_ref.data import load_sample
    from ddpm_ref.evaluate import save_samples

    net = toy_feature_net
    stats = tmp_path / "ref.npz"
    assert main(["fid-stats", "--data", "sample:test", "--num-images", "40", "--out", str(stats),
                 "--feature-weights", str(net), *COMMON]) == 0
    assert "40 images" in capsys.readouterr().out
    npz, _ = save_samples(load_sample("test")[0][:40], tmp_path / "s")
    assert main(["evaluate", "--metric", "fid", "--samples", str(npz), "--ref-stats", str(stats),
                 "--feature-weights", str(net), *COMMON]) == 0
    rec = json.loads((tmp_path / "s" / "fid.json").read_text())
    assert rec["num_samples"] == 40 and abs(rec["fid"]) < 1e-3 and rec["reference"] == str(stats)
    capsys.readouterr()
    # reference statistics from a JPEG folder are refused
    from PIL import Image

    (tmp_path / "jpg" / "a").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(load_sample("test")[0][i]).save(tmp_path / "jpg" / "a" / f"{i}.jpg")
    assert main(["fid-stats", "--data", f"folder:{tmp_path / 'jpg'}", "--out", str(tmp_path / "j.npz"),
                 *COMMON]) == 2
    assert "not pixel-exact" in capsys.readouterr().err


def test_no_option_is_swallowed_by_torchrun():
    """torchrun's own parser sees every argument after ``-m ddpm_ref``: an option of ours that is a
    prefix of one of its options (``--num`` of ``--numa-binding``) makes torchrun fail."""
    from torch.distributed.run import get_args_parser

    from ddpm_ref.__main__ import build_parser

    theirs = [o for a in get_args_parser()._actions for o in a.option_strings if o.startswith("--")]
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    clashes = [
        (cmd, o, t)
        for cmd, p in sub.choices.items()
        for a in p._actions
        for o in a.option_strings
        if o.startswith("--") and o != "--help"
        for t in theirs
        if t.startswith(o)
    ]
    assert clashes == []


TINY = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny_cifar10"


@pytest.mark.parametrize("opts", [["--sampler", "ode", "--rtol", "1e-2", "--atol", "1e-2"],
                                  ["--sampler", "ddim", "--steps", "4", "--eta", "0.5"]])
def test_evaluate_fid_generates_with_every_sampler_option(tmp_path, capsys, toy_feature_net, opts):
    """``evaluate --metric fid`` generating its own samples takes the same sampler options as ``sample``
    (the ODE with its tolerances, DDIM with eta): its FID equals the FID of ``sample``'s images made with
    those options, and differs from the FID of images made with the defaults (so the options reach the
    sampler)."""
    net = toy_feature_net
    stats = tmp_path / "ref.npz"
    assert main(["fid-stats", "--data", "sample:test", "--num-images", "20", "--out", str(stats),
                 "--feature-weights", str(net), *COMMON]) == 0
    gen = ["--checkpoint", str(TINY), "--num-samples", "3", "--batch-size", "3", "--seed", "1"]
    assert main(["evaluate", "--metric", "fid", *gen, *opts, "--ref-stats", str(stats), "--feature-weights",
                 str(net), "--out", str(tmp_path / "e"), *COMMON]) == 0
    rec = json.loads((tmp_path / "e" / "fid.json").read_text())
    assert rec["sampler"] == opts[1] and rec["num_samples"] == 3
    if opts[1] == "ode":
        assert rec["rtol"] == rec["atol"] == 1e-2 and len(rec["nfe_per_batch"]) == 1
    else:
        assert rec["eta"] == 0.5 and rec["steps"] == 4
    fids = {}
    for name, extra in (("same", opts), ("default", [o for o in opts if o != "0.5" and o != "--eta"
                                                      and o != "1e-2" and o not in ("--rtol", "--atol")])):
        assert main(["sample", *gen, *extra, "--out", str(tmp_path / name), *COMMON]) == 0
        assert main(["evaluate", "--metric", "fid", "--samples", str(tmp_path / name / "samples.npz"),
                     "--ref-stats", str(stats), "--feature-weights", str(net), *COMMON]) == 0
        fids[name] = json.loads((tmp_path / name / "fid.json").read_text())["fid"]
    capsys.readouterr()
    assert abs(fids["same"] - rec["fid"]) < 1e-9
    assert abs(fids["default"] - rec["fid"]) > 1e-6


def test_sampling_batch_that_cannot_fit_is_refused(capsys, tmp_path):
    """A --batch-size whose network evaluation needs more memory than the machine has is refused in one
    line before any work (the OOM killer would end the run without a message): 100000 images of the tiny
    U-Net need at least 125 GB."""
    assert main(["sample", "--checkpoint", str(TINY), "--num-samples", "100000", "--batch-size", "100000",
                 "--out", str(tmp_path / "s"), *COMMON]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --batch-size 100000: one network evaluation on 100000 images needs at least")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "use --batch-size" in err and not (tmp_path / "s" / "samples.npz").exists()


def test_bpd_batch_checked_against_memory(monkeypatch, capsys, tmp_path):
    """``evaluate --metric bpd`` checks its batch (capped at the number of images) the same way."""
    from ddpm_ref import _resources

    monkeypatch.setattr(_resources, "available_memory", lambda device: 4 * 2**20)
    assert main(["evaluate", "--metric", "bpd", "--checkpoint", str(TINY), "--data", "sample:test",
                 "--num-images", "8", "--batch-size", "64", "--out", str(tmp_path / "b"), *COMMON]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --batch-size 8: one network evaluation on 8 images needs at least")
    assert err.count("\n") == 1
    assert "only 4.0 MB of memory is available" in err


def test_inference_estimate_is_a_lower_bound_of_the_measured_peak():
    """The sampling memory estimate (meta device, tensors alive at once) never exceeds what one forward
    pass really needs: the process's peak resident memory during the pass (the kernel's VmHWM, reset
    just before it through /proc/self/clear_refs) minus its resident memory before it (a fresh
    subprocess); and it is not a vacuous bound (at least 40% of it)."""
    from ddpm_ref._resources import inference_memory_estimate
    from ddpm_ref.config import load_config

    code = (
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "from ddpm_ref.config import load_config\n"
        "from ddpm_ref.unet import UNet\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key + ':'):\n"
        "            return int(line.split()[1]) * 1024\n"
        "kw = load_config('tiny').unet_kwargs(); m = UNet(**kw).eval()\n"
        "x = torch.randn(256, 3, 32, 32); t = torch.zeros(256, dtype=torch.long)\n"
        "with torch.no_grad():\n"
        "    m(x[:1], t[:1])\n"
        "    open('/proc/self/clear_refs', 'w').write('5')  # resets the peak RSS (VmHWM) to the current RSS\n"
        "    now = status('VmRSS')\n"
        "    assert status('VmHWM') <= now + (1 << 20), 'the peak RSS could not be reset'\n"
        "    y = m(x, t); del y\n"
        "print(status('VmHWM') - now)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if run.returncode != 0:
        pytest.skip(f"peak RSS cannot be measured here: {run.stderr.strip().splitlines()[-1:]}")
    measured = int(run.stdout.split()[-1])
    est = inference_memory_estimate(load_config("tiny").unet_kwargs(), 256)
    print(f"estimate {est / 2**20:.1f} MB, measured peak rise {measured / 2**20:.1f} MB")
    assert 0.4 * measured <= est <= measured
