"""Every subcommand against a corpus of bad inputs made here: one line on stderr, exit code 2.

The corpus (a tiny 16x16 model, T = 20, trained for 2 steps; samples, statistics from a small
TorchScript stand-in for Inception, data files) is built once per module; then
``tests/cli_driver.py`` runs every case of :data:`CASES` in its own forked process (real exit
code, real stderr, Python's own traceback for an uncaught exception). For each bad case:

- exit code 2 (1 is reserved for a diverged training run),
- exactly one line on stderr, ``error: ...``, naming the file or option at fault,
- no traceback, and no pre-existing file of the corpus changed or removed (nor, except where a
  case allows it, any new file made).

Valid controls (``ok_*``) must succeed, so the table cannot pass by refusing everything.
Full targets: a 64 KiB tmpfs in a private mount namespace where the test may mount one (root),
and everywhere a file-size limit (``RLIMIT_FSIZE``: writes fail with EFBIG). Read-only targets:
a read-only bind mount (root) or ``chmod 555``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--device", "cpu", "--no-progress", "--threads", "1"]
TINY16 = ["--config", "tiny", "--set", "model.unet=tiny16", "--set", "diffusion.num_timesteps=20",
          "--set", "train.batch_size=4", "--set", "train.sample_every=0", "--set", "train.log_every=1",
          "--no-tensorboard"]


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 7, stride=8)

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    from ddpm_ref.data import load_sample

    x = load_sample("train")[0][seed: seed + n]
    if size == 32:
        return x
    f = 32 // size
    return x.reshape(n, size, f, size, f, 3).astype(np.float64).mean(axis=(2, 4)).round().astype(np.uint8)


def _damage(src: Path, dst: Path, how: str) -> Path:
    data = src.read_bytes()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "bitflip":  # one bit in the middle of the data
        b = bytearray(data)
        b[len(b) // 2] ^= 0x10
        data = bytes(b)
    dst.write_bytes(data)
    return dst


def build_corpus(c: Path) -> None:
    """All inputs of the table (called once; everything small)."""
    from ddpm_ref.config import apply_overrides, get_config, save_config
    from ddpm_ref.convert import save_unet
    from ddpm_ref.evaluate import save_samples
    from ddpm_ref.fid import compute_statistics, save_statistics
    from ddpm_ref.train import Trainer

    rng = random.Random(0)
    img16 = _images(64, 16)
    np.savez(c / "img16.npz", x_train=img16, x_test=img16[:8])
    np.savez(c / "img32.npz", x_train=_images(16, 32))
    cfg = apply_overrides(get_config("tiny"), [
        "model.unet=tiny16", "diffusion.num_timesteps=20", "train.batch_size=4", "train.total_steps=2",
        "train.sample_every=0", "train.log_every=1", f"data=npz:{c / 'img16.npz'}",
    ])  # fmt: skip
    tr = Trainer(cfg, c / "run", device="cpu", progress=False, tensorboard=False)
    tr.fit()
    tr.close()
    save_unet(tr.ema, c / "model.safetensors", recipe=tr.config, weights="ema")
    save_unet(tr.ema, c / "norecipe" / "m.safetensors")
    save_unet(tr.ema, c / "emaonly" / "ema.safetensors", recipe=tr.config, weights="ema")
    save_unet(tr.ema, c / "shipped" / "ema.safetensors", weights="ema")
    save_unet(tr.model, c / "shipped" / "raw.safetensors", weights="raw")
    save_config(tr.config, c / "shipped" / "config.json")
    torch.save({"w": torch.zeros(3)}, c / "statedict.pt")
    torch.save({"w": torch.zeros(3), "note": _Opaque()}, c / "objects.pt")
    (c / "notes.txt").write_text("these are notes, not an array\n")
    (c / "notes.json").write_text("not json at all")
    (c / "random.bin").write_bytes(bytes(rng.getrandbits(8) for _ in range(4096)))
    for name in ("random.npz", "random.safetensors", "random.pt"):
        (c / name).write_bytes((c / "random.bin").read_bytes())
    np.save(c / "array.npy", img16)
    np.savez(c / "float.npz", x_train=img16.astype(np.float32))
    np.savez(c / "gray.npz", x_train=img16[..., 0])
    np.savez(c / "chw.npz", x_train=np.ascontiguousarray(img16.transpose(0, 3, 1, 2)))
    np.savez(c / "two.npz", a=img16, b=img16)
    _damage(c / "img16.npz", c / "trunc.npz", "truncated")
    _damage(c / "img16.npz", c / "flip.npz", "bitflip")
    _damage(c / "model.safetensors", c / "trunc.safetensors", "truncated")
    _damage(c / "model.safetensors", c / "flip.safetensors", "bitflip")
    _damage(c / "run" / "checkpoints" / "last.pt", c / "trunc.pt", "truncated")
    _damage(c / "run" / "checkpoints" / "last.pt", c / "flip.pt", "bitflip")
    # folders
    (c / "empty_dir").mkdir()
    from PIL import Image

    (c / "loose").mkdir()
    Image.fromarray(img16[0]).save(c / "loose" / "a.png")
    (c / "broken" / "cat").mkdir(parents=True)
    Image.fromarray(img16[0]).save(c / "broken" / "cat" / "a.png")
    (c / "broken" / "cat" / "b.png").write_bytes(b"\x89PNG but not really")
    (c / "jpeg" / "cat").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(img16[i]).save(c / "jpeg" / "cat" / f"{i}.jpg", quality=90)
    (c / "diffusers_bad").mkdir()
    (c / "diffusers_bad" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    (c / "diffusers_bad" / "diffusion_pytorch_model.safetensors").write_bytes((c / "random.bin").read_bytes())
    (c / "diffusers_badjson").mkdir()
    (c / "diffusers_badjson" / "config.json").write_text("{broken")
    # a run interrupted before its first checkpoint: config.json only
    save_config(tr.config, c / "inprog" / "config.json")
    # FID material: a toy feature network, statistics of 16x16 images, samples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(_Toy().eval()), str(c / "toy.pt"))
    stats = compute_statistics(_images(32, 16, seed=100), "img16 test", True, progress=False, weights=c / "toy.pt")
    save_statistics(c / "stats16.npz", stats)
    np.savez(c / "pytorch_fid.npz", mu=stats.mu, sigma=stats.sigma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        lossy = compute_statistics(_images(32, 16, seed=100), "img16 test, JPEG q75", False, allow_lossy=True,
                                   progress=False, weights=c / "toy.pt")
    save_statistics(c / "lossy_stats.npz", lossy)
    _damage(c / "stats16.npz", c / "trunc_stats.npz", "truncated")
    save_samples(_images(8, 16, seed=200), c / "samples16")
    save_samples(_images(8, 32, seed=200), c / "samples32")
    _damage(c / "samples16" / "samples.npz", c / "trunc_samples.npz", "truncated")
    _damage(c / "samples16" / "samples.npz", c / "flip_samples.npz", "bitflip")
    (c / "samples16" / "fid.json").write_text('{"fid": 1.0}\n')
    (c / "evaldir").mkdir()
    (c / "evaldir" / "bpd.json").write_text("{}\n")
    (c / "existing.npz").write_bytes(b"user's file")
    (c / "existing.safetensors").write_bytes(b"user's file")
    for d in ("full_tmpfs", "readonly"):
        (c / d).mkdir()


class _Opaque:
    """Any class: torch.save pickles it as a GLOBAL that weights_only loading refuses."""


C = "{C}"


def case(id, argv, names=(), code=2, **kw):
    return dict(id=id, argv=argv, names=list(names), code=code, **kw)


CASES = [
    # ------------------------------------------------------------------ train
    case("t_npz_truncated", ["train", *TINY16, "--data", "npz:{C}/trunc.npz", "--out", "{C}/o/t1", *COMMON],
         ["trunc.npz"]),
    case("t_npz_bitflip", ["train", *TINY16, "--data", "npz:{C}/flip.npz", "--out", "{C}/o/t2", *COMMON],
         ["flip.npz"]),
    case("t_npz_random", ["train", *TINY16, "--data", "npz:{C}/random.npz", "--out", "{C}/o/t3", *COMMON],
         ["random.npz"]),
    case("t_npz_text", ["train", *TINY16, "--data", "npz:{C}/notes.txt", "--out", "{C}/o/t4", *COMMON],
         ["notes.txt", "not an .npz"], forbid=["allow_pickle"]),
    case("t_npz_npy", ["train", *TINY16, "--data", "npz:{C}/array.npy", "--out", "{C}/o/t5", *COMMON],
         ["array.npy", ".npy"]),
    case("t_npz_key", ["train", *TINY16, "--data", "npz:{C}/img16.npz:nokey", "--out", "{C}/o/t6", *COMMON],
         ["img16.npz", "nokey"]),
    case("t_npz_dtype", ["train", *TINY16, "--data", "npz:{C}/float.npz", "--out", "{C}/o/t7", *COMMON],
         ["float.npz", "float32"]),
    case("t_npz_gray", ["train", *TINY16, "--data", "npz:{C}/gray.npz", "--out", "{C}/o/t8", *COMMON],
         ["gray.npz", "greyscale"], forbid=["cannot choose"]),
    case("t_npz_chw", ["train", *TINY16, "--data", "npz:{C}/chw.npz", "--out", "{C}/o/t9", *COMMON],
         ["chw.npz", "channels first"]),
    case("t_npz_two", ["train", *TINY16, "--data", "npz:{C}/two.npz", "--out", "{C}/o/t9b", *COMMON],
         ["two.npz", "npz:"]),
    case("t_resolution", ["train", *TINY16, "--data", "npz:{C}/img32.npz", "--out", "{C}/o/t10", *COMMON],
         ["img32.npz", "--set model.resolution=32"], forbid=["image_size"]),
    case("t_folder_empty", ["train", *TINY16, "--data", "folder:{C}/empty_dir", "--out", "{C}/o/t11", *COMMON],
         ["empty_dir"]),
    case("t_folder_loose", ["train", *TINY16, "--data", "folder:{C}/loose", "--out", "{C}/o/t12", *COMMON],
         ["loose", "class subfolders"]),
    case("t_folder_broken", ["train", *TINY16, "--data", "folder:{C}/broken", "--out", "{C}/o/t13", *COMMON],
         ["b.png"]),
    case("t_folder_missing", ["train", *TINY16, "--data", "folder:{C}/nowhere", "--out", "{C}/o/t14", *COMMON],
         ["nowhere"]),
    case("t_cifar_missing", ["train", *TINY16, "--data", "cifar10:{C}/nowhere", "--out", "{C}/o/t15", *COMMON],
         ["nowhere"]),
    case("t_config_missing", ["train", "--config", "{C}/missing.json", "--out", "{C}/o/t16", *COMMON],
         ["missing.json"]),
    case("t_config_text", ["train", "--config", "{C}/notes.json", "--out", "{C}/o/t17", *COMMON],
         ["notes.json", "not a JSON config"]),
    case("t_bad_set", ["train", *TINY16, "--set", "optim.learning_rate=1", "--out", "{C}/o/t18", *COMMON],
         ["learning_rate"]),
    case("t_batch_vs_data", ["train", *TINY16, "--data", "npz:{C}/img16.npz", "--batch-size", "5000",
                             "--out", "{C}/o/t19", *COMMON], ["--batch-size", "64 training images"]),
    case("t_batch_vs_memory", ["train", "--config", "tiny", "--data", "npz:{C}/img32.npz", "--batch-size", "16",
                               "--set", "model.ch=4096", "--out", "{C}/o/t19b", *COMMON],
         ["--batch-size", "memory"]),
    case("t_steps_below", ["train", "--out", "{C}/run", "--resume", "--steps", "1", *COMMON],
         ["--steps", "step the run is at (2"]),
    case("t_stop_at_below", ["train", "--out", "{C}/run", "--resume", "--stop-at", "1", *COMMON], ["--stop-at"]),
    case("t_existing_run", ["train", *TINY16, "--data", "npz:{C}/img16.npz", "--out", "{C}/run", *COMMON],
         ["run", "--resume"]),
    case("t_in_progress", ["train", *TINY16, "--data", "npz:{C}/img16.npz", "--out", "{C}/inprog", *COMMON],
         ["inprog", "--resume", "--force"]),
    case("t_resume_nothing", ["train", "--out", "{C}/o/t23", "--resume", *COMMON], ["t23", "--config"]),
    case("t_resume_truncated", ["train", "--out", "{C}/o/t24", "--resume", "{C}/trunc.pt", *COMMON],
         ["trunc.pt"]),
    case("t_resume_flip", ["train", "--out", "{C}/o/t24b", "--resume", "{C}/flip.pt", *COMMON], ["flip.pt"]),
    case("t_resume_changed", ["train", "--out", "{C}/run", "--resume", "--lr", "1", *COMMON],
         ["changed recipe", "optim.lr"]),
    case("t_out_is_file", ["train", *TINY16, "--data", "npz:{C}/img16.npz", "--out", "{C}/notes.txt", *COMMON],
         ["notes.txt", "not a directory"]),
    case("t_full_rlimit", ["train", *TINY16, "--data", "npz:{C}/img16.npz", "--steps", "1", "--out", "{C}/o/t26",
                           *COMMON], ["last.pt", "file too large"], full="rlimit", limit=65536, allow_new="o/t26"),
    case("t_full_tmpfs", ["train", *TINY16, "--data", "npz:{C}/img16.npz", "--steps", "1", "--out",
                          "{C}/full_tmpfs/run", *COMMON], ["last.pt", "no space left"], full="tmpfs",
         target="{C}/full_tmpfs"),
    case("t_readonly", ["train", *TINY16, "--data", "npz:{C}/img16.npz", "--steps", "1", "--out", "{C}/readonly/r",
                        *COMMON], ["readonly"], readonly="{C}/readonly"),
    case("t_rank1_silent", ["train", *TINY16, "--data", "webdataset:x", "--out", "{C}/o/t28", *COMMON],
         code=2, env={"RANK": "1"}, lines=0),
    case("t_debug_traceback", ["train", *TINY16, "--data", "npz:{C}/trunc.npz", "--out", "{C}/o/t29", "--debug",
                               *COMMON], ["trunc.npz"], debug=True),
    # ------------------------------------------------------------------ sample
    case("s_st_truncated", ["sample", "--checkpoint", "{C}/trunc.safetensors", "--out", "{C}/o/s1", *COMMON],
         ["trunc.safetensors"]),
    case("s_st_bitflip", ["sample", "--checkpoint", "{C}/flip.safetensors", "--out", "{C}/o/s1b", *COMMON],
         ["flip.safetensors", "corrupted"]),
    case("s_pt_bitflip", ["sample", "--checkpoint", "{C}/flip.pt", "--out", "{C}/o/s1c", *COMMON],
         ["flip.pt", "corrupted"]),
    case("s_st_random", ["sample", "--checkpoint", "{C}/random.safetensors", "--out", "{C}/o/s2", *COMMON],
         ["random.safetensors"]),
    case("s_pt_truncated", ["sample", "--checkpoint", "{C}/trunc.pt", "--out", "{C}/o/s3", *COMMON],
         ["trunc.pt", "truncated"]),
    case("s_pt_text", ["sample", "--checkpoint", "{C}/notes.txt", "--out", "{C}/o/s4", *COMMON], ["notes.txt"]),
    case("s_pt_random", ["sample", "--checkpoint", "{C}/random.pt", "--out", "{C}/o/s4b", *COMMON],
         ["random.pt"], forbid=["Please file an issue"]),
    case("s_pt_objects", ["sample", "--checkpoint", "{C}/objects.pt", "--out", "{C}/o/s5", *COMMON],
         ["objects.pt", "refusing"]),
    case("s_pt_statedict", ["sample", "--checkpoint", "{C}/statedict.pt", "--out", "{C}/o/s6", *COMMON],
         ["statedict.pt", "convert"], forbid=["ddpm_ref.convert"]),
    case("s_no_recipe", ["sample", "--checkpoint", "{C}/norecipe/m.safetensors", "--out", "{C}/o/s7", *COMMON],
         ["m.safetensors", "--config"]),
    case("s_no_ema_folder", ["sample", "--checkpoint", "{C}/emaonly", "--no-ema", "--out", "{C}/o/s8", *COMMON],
         ["emaonly", "--no-ema"]),
    case("s_no_ema_file", ["sample", "--checkpoint", "{C}/model.safetensors", "--no-ema", "--out", "{C}/o/s9",
                           *COMMON], ["model.safetensors", "--no-ema"]),
    case("s_eta_ancestral", ["sample", "--checkpoint", "{C}/model.safetensors", "--eta", "0.5", "--out",
                             "{C}/o/s10", *COMMON], ["--eta"]),
    case("s_eta_too_big", ["sample", "--checkpoint", "{C}/model.safetensors", "--sampler", "ddim", "--steps", "5",
                           "--eta", "5", "--out", "{C}/o/s11", *COMMON], ["--eta 5"]),
    case("s_ddim_no_steps", ["sample", "--checkpoint", "{C}/model.safetensors", "--sampler", "ddim", "--out",
                             "{C}/o/s12", *COMMON], ["--steps"]),
    case("s_steps_above_T", ["sample", "--checkpoint", "{C}/model.safetensors", "--steps", "999", "--out",
                             "{C}/o/s13", *COMMON], ["--steps 999", "T = 20"]),
    case("s_num_zero", ["sample", "--checkpoint", "{C}/model.safetensors", "--num-samples", "0", "--out",
                        "{C}/o/s14", *COMMON], ["--num-samples"]),
    case("s_out_exists", ["sample", "--checkpoint", "{C}/model.safetensors", "--out", "{C}/samples16", *COMMON],
         ["samples.npz", "--force"]),
    case("s_out_is_file", ["sample", "--checkpoint", "{C}/model.safetensors", "--out", "{C}/notes.txt", *COMMON],
         ["notes.txt"], forbid=["Errno"]),
    case("s_missing", ["sample", "--checkpoint", "{C}/nope.pt", "--out", "{C}/o/s15", *COMMON], ["nope.pt"]),
    case("s_full_rlimit", ["sample", "--checkpoint", "{C}/model.safetensors", "--num-samples", "2", "--steps", "2",
                           "--out", "{C}/o/s16", *COMMON], ["samples.npz", "file too large"], full="rlimit",
         limit=1024, allow_new="o/s16"),
    case("s_readonly", ["sample", "--checkpoint", "{C}/model.safetensors", "--num-samples", "2", "--steps", "2",
                        "--out", "{C}/readonly/s", *COMMON], ["readonly"], readonly="{C}/readonly"),
    # ------------------------------------------------------------------ evaluate
    case("e_samples_truncated", ["evaluate", "--metric", "fid", "--samples", "{C}/trunc_samples.npz",
                                 "--ref-stats", "{C}/stats16.npz", "--feature-weights", "{C}/toy.pt",
                                 "--out", "{C}/o/e1", *COMMON], ["trunc_samples.npz"]),
    case("e_samples_bitflip", ["evaluate", "--metric", "fid", "--samples", "{C}/flip_samples.npz",
                               "--ref-stats", "{C}/stats16.npz", "--feature-weights", "{C}/toy.pt",
                               "--out", "{C}/o/e2", *COMMON], ["flip_samples.npz"]),
    case("e_samples_foreign", ["evaluate", "--metric", "fid", "--samples", "{C}/two.npz", "--ref-stats",
                               "{C}/stats16.npz", "--feature-weights", "{C}/toy.pt", "--out", "{C}/o/e3", *COMMON],
         ["two.npz", "images"]),
    case("e_stats_truncated", ["evaluate", "--metric", "fid", "--samples", "{C}/samples16/samples.npz",
                               "--ref-stats", "{C}/trunc_stats.npz", "--feature-weights", "{C}/toy.pt",
                               "--out", "{C}/o/e4", *COMMON], ["trunc_stats.npz"]),
    case("e_stats_random", ["evaluate", "--metric", "fid", "--samples", "{C}/samples16/samples.npz",
                            "--ref-stats", "{C}/random.npz", "--feature-weights", "{C}/toy.pt",
                            "--out", "{C}/o/e5", *COMMON], ["random.npz"]),
    case("e_stats_pytorch_fid", ["evaluate", "--metric", "fid", "--samples", "{C}/samples16/samples.npz",
                                 "--ref-stats", "{C}/pytorch_fid.npz", "--feature-weights", "{C}/toy.pt",
                                 "--out", "{C}/o/e6", *COMMON], ["pytorch_fid.npz", "fid-stats"]),
    case("e_stats_lossy", ["evaluate", "--metric", "fid", "--samples", "{C}/samples16/samples.npz",
                           "--ref-stats", "{C}/lossy_stats.npz", "--feature-weights", "{C}/toy.pt",
                           "--out", "{C}/o/e6b", *COMMON], ["lossy_stats.npz", "fid-stats"], forbid=["allow_lossy"]),
    case("e_feature_missing", ["evaluate", "--metric", "fid", "--samples", "{C}/samples16/samples.npz",
                               "--ref-stats", "{C}/stats16.npz", "--feature-weights", "{C}/nope.pt",
                               "--out", "{C}/o/e7", *COMMON], ["nope.pt", "not found"], forbid=["made with"]),
    case("e_feature_not_script", ["evaluate", "--metric", "fid", "--samples", "{C}/samples16/samples.npz",
                                  "--ref-stats", "{C}/stats16.npz", "--feature-weights", "{C}/notes.txt",
                                  "--out", "{C}/o/e8", *COMMON], ["notes.txt"]),
    case("e_size_mismatch", ["evaluate", "--metric", "fid", "--samples", "{C}/samples32/samples.npz",
                             "--ref-stats", "{C}/stats16.npz", "--feature-weights", "{C}/toy.pt",
                             "--out", "{C}/o/e9", *COMMON], ["32x32", "16x16"]),
    case("e_fid_option_with_bpd", ["evaluate", "--checkpoint", "{C}/run", "--ref-stats", "{C}/stats16.npz",
                                   "--out", "{C}/o/e10", *COMMON], ["--ref-stats", "--metric bpd"]),
    case("e_bpd_option_with_fid", ["evaluate", "--metric", "fid", "--samples", "{C}/samples16/samples.npz",
                                   "--ref-stats", "{C}/stats16.npz", "--num-images", "3", "--out", "{C}/o/e11",
                                   *COMMON], ["--num-images", "--metric fid"]),
    case("e_checkpoint_with_samples", ["evaluate", "--metric", "fid", "--samples", "{C}/samples16/samples.npz",
                                       "--checkpoint", "{C}/run", "--ref-stats", "{C}/stats16.npz",
                                       "--out", "{C}/o/e11b", *COMMON], ["--checkpoint", "--samples"]),
    case("e_batch_zero", ["evaluate", "--checkpoint", "{C}/run", "--batch-size", "0", *COMMON], ["--batch-size"]),
    case("e_fid_ddim_no_steps", ["evaluate", "--metric", "fid", "--checkpoint", "{C}/run", "--sampler", "ddim",
                                 "--ref-stats", "{C}/stats16.npz", "--out", "{C}/o/e12", *COMMON], ["--steps"]),
    case("e_out_exists", ["evaluate", "--checkpoint", "{C}/run", "--data", "npz:{C}/img16.npz", "--num-images", "2",
                          "--out", "{C}/evaldir", *COMMON], ["bpd.json", "--force"]),
    case("e_ckpt_random", ["evaluate", "--checkpoint", "{C}/random.pt", "--out", "{C}/o/e13", *COMMON],
         ["random.pt"]),
    case("e_data_gray", ["evaluate", "--checkpoint", "{C}/run", "--data", "npz:{C}/gray.npz", "--out",
                         "{C}/o/e14", *COMMON], ["gray.npz"]),
    case("e_data_resolution", ["evaluate", "--checkpoint", "{C}/run", "--data", "npz:{C}/img32.npz", "--out",
                               "{C}/o/e14b", *COMMON], ["img32.npz", "16x16"]),
    case("e_num_images_too_many", ["evaluate", "--checkpoint", "{C}/run", "--data", "npz:{C}/img16.npz",
                                   "--split", "test", "--num-images", "5000", "--out", "{C}/o/e15", *COMMON],
         ["--num-images 5000"]),
    case("e_no_ema_no_raw", ["evaluate", "--checkpoint", "{C}/emaonly", "--no-ema", "--out", "{C}/o/e16",
                             *COMMON], ["emaonly", "--no-ema"]),
    case("e_full_rlimit", ["evaluate", "--checkpoint", "{C}/run", "--data", "npz:{C}/img16.npz", "--split", "test",
                           "--num-images", "2", "--out", "{C}/o/e17", *COMMON], ["bpd", "file too large"],
         full="rlimit", limit=512, allow_new="o/e17"),
    case("e_readonly", ["evaluate", "--checkpoint", "{C}/run", "--data", "npz:{C}/img16.npz", "--split", "test",
                        "--num-images", "2", "--out", "{C}/readonly/e", *COMMON], ["readonly"],
         readonly="{C}/readonly"),
    # ------------------------------------------------------------------ fid-stats
    case("f_data_truncated", ["fid-stats", "--data", "npz:{C}/trunc.npz", "--out", "{C}/o/f1.npz",
                              "--feature-weights", "{C}/toy.pt", *COMMON], ["trunc.npz"]),
    case("f_out_exists", ["fid-stats", "--data", "npz:{C}/img16.npz", "--out", "{C}/existing.npz",
                          "--feature-weights", "{C}/toy.pt", *COMMON], ["existing.npz", "--force"]),
    case("f_out_not_npz", ["fid-stats", "--data", "npz:{C}/img16.npz", "--out", "{C}/o/f2.pkl",
                           "--feature-weights", "{C}/toy.pt", *COMMON], ["f2.pkl", ".npz"]),
    case("f_jpeg", ["fid-stats", "--data", "folder:{C}/jpeg", "--out", "{C}/o/f3.npz", "--feature-weights",
                    "{C}/toy.pt", *COMMON], ["jpeg", "pixel-exact"], forbid=["allow_lossy"]),
    case("f_feature_missing", ["fid-stats", "--data", "npz:{C}/img16.npz", "--out", "{C}/o/f4.npz",
                               "--feature-weights", "{C}/nope.pt", *COMMON], ["nope.pt"]),
    case("f_num_images_one", ["fid-stats", "--data", "npz:{C}/img16.npz", "--num-images", "1", "--out",
                              "{C}/o/f5.npz", "--feature-weights", "{C}/toy.pt", *COMMON], ["--num-images 1"]),
    case("f_full_rlimit", ["fid-stats", "--data", "npz:{C}/img16.npz", "--out", "{C}/o/f6.npz",
                           "--feature-weights", "{C}/toy.pt", *COMMON], ["f6.npz", "file too large"],
         full="rlimit", limit=256),
    case("f_readonly", ["fid-stats", "--data", "npz:{C}/img16.npz", "--out", "{C}/readonly/f.npz",
                        "--feature-weights", "{C}/toy.pt", *COMMON], ["readonly"], readonly="{C}/readonly"),
    # ------------------------------------------------------------------ convert
    case("c_pt_truncated", ["convert", "{C}/trunc.pt", "--out", "{C}/o/c1.safetensors"], ["trunc.pt"]),
    case("c_pt_objects", ["convert", "{C}/objects.pt", "--out", "{C}/o/c2.safetensors"], ["objects.pt"]),
    case("c_text", ["convert", "{C}/notes.txt", "--out", "{C}/o/c3.safetensors"], ["notes.txt"],
         forbid=["KeyError"]),
    case("c_random_pt", ["convert", "{C}/random.pt", "--out", "{C}/o/c4.safetensors"], ["random.pt"]),
    case("c_st_truncated", ["convert", "{C}/trunc.safetensors", "--out", "{C}/o/c5.safetensors"],
         ["trunc.safetensors"]),
    case("c_st_bitflip", ["convert", "{C}/flip.safetensors", "--out", "{C}/o/c5b.safetensors"],
         ["flip.safetensors", "corrupted"]),
    case("c_pt_bitflip", ["convert", "{C}/flip.pt", "--out", "{C}/o/c5c.safetensors"], ["flip.pt", "corrupted"]),
    case("c_st_random", ["convert", "{C}/random.safetensors", "--out", "{C}/o/c6.safetensors"],
         ["random.safetensors"]),
    case("c_statedict_unknown", ["convert", "{C}/statedict.pt", "--out", "{C}/o/c7.safetensors"],
         ["statedict.pt"]),
    case("c_diffusers_damaged", ["convert", "{C}/diffusers_bad", "--out", "{C}/o/c8.safetensors"],
         ["diffusion_pytorch_model.safetensors"]),
    case("c_diffusers_badjson", ["convert", "{C}/diffusers_badjson", "--out", "{C}/o/c9.safetensors"],
         ["config.json"]),
    case("c_empty_dir", ["convert", "{C}/empty_dir", "--out", "{C}/o/c10.safetensors"], ["empty_dir"]),
    case("c_missing", ["convert", "{C}/nope.bin", "--out", "{C}/o/c11.safetensors"], ["nope.bin"]),
    case("c_out_exists", ["convert", "{C}/run", "--out", "{C}/existing.safetensors"],
         ["existing.safetensors", "--force"]),
    case("c_out_suffix", ["convert", "{C}/run", "--out", "{C}/o/c12.bin"], ["c12.bin", ".safetensors"]),
    case("c_no_ema_without_raw", ["convert", "{C}/model.safetensors", "--no-ema", "--out", "{C}/o/c13.safetensors"],
         ["--no-ema"]),
    case("c_config_with_checkpoint", ["convert", "{C}/run", "--config", "cifar10", "--out",
                                      "{C}/o/c14.safetensors"], ["--config"]),
    case("c_config_misfit", ["convert", "{C}/norecipe/m.safetensors", "--config", "cifar10", "--out",
                             "{C}/o/c15.safetensors"], ["--config", "U-Net"]),
    case("c_full_rlimit", ["convert", "{C}/run", "--out", "{C}/o/c16.safetensors"],
         ["c16.safetensors", "file too large"], full="rlimit", limit=1024),
    case("c_readonly", ["convert", "{C}/run", "--out", "{C}/readonly/c.safetensors"], ["readonly"],
         readonly="{C}/readonly"),
    # ------------------------------------------------------------------ valid controls
    case("ok_train", ["train", *TINY16, "--data", "npz:{C}/img16.npz", "--steps", "1", "--out", "{C}/o/ok_t",
                      *COMMON], code=0, allow_new="o/ok_t"),
    case("ok_train_progress_in_a_log", ["train", *TINY16, "--data", "npz:{C}/img16.npz", "--steps", "3", "--out",
                                        "{C}/o/ok_tp", "--device", "cpu", "--threads", "1"], code=0,
         allow_new="o/ok_tp", stderr_has=["train: 3/3 step (100.0%)"], stderr_lacks=["\r"]),
    case("ok_evaluate_one_image", ["evaluate", "--checkpoint", "{C}/run", "--data", "npz:{C}/img16.npz", "--split",
                                   "test", "--num-images", "1", "--out", "{C}/o/ok_e0", *COMMON], code=0,
         allow_new="o/ok_e0", stdout_has=["over 1 image (no standard error"], stdout_lacks=["nan"]),
    case("ok_resume_from_config_json", ["train", "--out", "{C}/o/ok_inprog", "--resume", "--steps", "1", *COMMON],
         code=0, allow_change="o/ok_inprog", setup_copy=["inprog", "o/ok_inprog"]),
    case("ok_sample_recipe_in_file", ["sample", "--checkpoint", "{C}/model.safetensors", "--num-samples", "2",
                                      "--steps", "2", "--out", "{C}/o/ok_s1", *COMMON], code=0, allow_new="o/ok_s1"),
    case("ok_sample_no_ema_folder", ["sample", "--checkpoint", "{C}/shipped", "--no-ema", "--num-samples", "2",
                                     "--sampler", "ddim", "--steps", "2", "--eta", "1", "--out", "{C}/o/ok_s2",
                                     *COMMON], code=0, allow_new="o/ok_s2"),
    case("ok_sample_config_given", ["sample", "--checkpoint", "{C}/norecipe/m.safetensors", "--config",
                                    "{C}/run/config.json", "--num-samples", "2", "--steps", "2", "--out",
                                    "{C}/o/ok_s3", *COMMON], code=0, allow_new="o/ok_s3"),
    case("ok_sample_force", ["sample", "--checkpoint", "{C}/model.safetensors", "--num-samples", "2", "--steps", "2",
                             "--out", "{C}/samples16", "--force", *COMMON], code=0, allow_change="samples16"),
    case("ok_evaluate_bpd", ["evaluate", "--checkpoint", "{C}/run", "--data", "npz:{C}/img16.npz", "--split",
                             "test", "--num-images", "2", "--out", "{C}/o/ok_e1", *COMMON], code=0,
         allow_new="o/ok_e1"),
    case("ok_evaluate_fid", ["evaluate", "--metric", "fid", "--samples", "{C}/samples32/samples.npz",
                             "--ref-data", "npz:{C}/img32.npz", "--feature-weights", "{C}/toy.pt",
                             "--out", "{C}/o/ok_e2", *COMMON], code=0, allow_new="o/ok_e2"),
    case("ok_fid_stats", ["fid-stats", "--data", "npz:{C}/img16.npz", "--out", "{C}/o/ok_f.npz",
                          "--feature-weights", "{C}/toy.pt", *COMMON], code=0, allow_new="o/ok_f.npz"),
    case("ok_convert_run", ["convert", "{C}/run", "--out", "{C}/o/ok_c.safetensors"], code=0,
         allow_new="o/ok_c.safetensors"),
    case("ok_convert_raw", ["convert", "{C}/run", "--no-ema", "--out", "{C}/o/ok_c_raw.safetensors"], code=0,
         allow_new="o/ok_c_raw.safetensors"),
    case("ok_sample_converted", ["sample", "--checkpoint", "{C}/o/ok_c.safetensors", "--num-samples", "2",
                                 "--steps", "2", "--out", "{C}/o/ok_s4", *COMMON], code=0, allow_new="o/ok_s4"),
]


def _fill(x, c: Path):
    if isinstance(x, str):
        return x.replace("{C}", str(c))
    if isinstance(x, list):
        return [_fill(v, c) for v in x]
    if isinstance(x, dict):
        return {k: _fill(v, c) for k, v in x.items()}
    return x


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import shutil

    c = tmp_path_factory.mktemp("corpus")
    torch.set_num_threads(1)
    build_corpus(c)
    (c / "o").mkdir()
    for cs in CASES:
        if "setup_copy" in cs:
            shutil.copytree(c / cs["setup_copy"][0], c / cs["setup_copy"][1])
    cases = [_fill(cs, c) for cs in CASES]
    work = tmp_path_factory.mktemp("driver")
    (work / "cases.json").write_text(json.dumps(cases))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "cli_driver.py"), str(work / "cases.json"),
                           str(work / "results.json"), str(c)], capture_output=True, text=True, timeout=900,
                          env=env, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return c, {cs["id"]: cs for cs in cases}, json.loads((work / "results.json").read_text())


@pytest.mark.parametrize("cid", [cs["id"] for cs in CASES])
def test_cli_case(results, cid):
    c, cases, res = results
    cs, r = cases[cid], res[cid]
    if r["setup"].startswith("skip"):
        pytest.skip(f"cannot set up this target here: {r['setup']}")
    err = r["stderr"]
    lines = err.splitlines()
    assert r["code"] == cs["code"], f"exit {r['code']}, expected {cs['code']}\n{err}\n{r['stdout']}"
    if cs.get("debug"):
        assert "Traceback" in err and lines[-1].startswith("error: ")
        lines = lines[-1:]
    else:
        assert "Traceback" not in err, err
    if cs["code"] == 2:
        assert len(lines) == cs.get("lines", 1), f"expected {cs.get('lines', 1)} stderr line(s), got:\n{err}"
        if lines:
            assert lines[0].startswith("error: ") and ": " in lines[0][7:], lines[0]
            low = lines[0].lower()
            for name in cs["names"]:
                assert name.lower() in low, f"{name!r} not in: {lines[0]}"
            for bad in cs.get("forbid", []):
                assert bad not in lines[0], f"{bad!r} in: {lines[0]}"
    else:
        assert not [ln for ln in lines if ln.startswith(("error", "warning"))], err
    for text in cs.get("stderr_has", []):
        assert text in err, (text, err)
    for text in cs.get("stderr_lacks", []):
        assert text not in err, (text, err)
    for text in cs.get("stdout_has", []):
        assert text in r["stdout"], (text, r["stdout"])
    for text in cs.get("stdout_lacks", []):
        assert text not in r["stdout"], (text, r["stdout"])
    allow_new = str(c / cs["allow_new"]) if cs.get("allow_new") else None
    allow_change = str(c / cs["allow_change"]) if cs.get("allow_change") else None
    changed = [p for p in r["changed"] + r["removed"] if not (allow_change and p.startswith(allow_change))]
    assert changed == [], f"pre-existing files changed or removed: {changed}"
    added = [p for p in r["added"] if not ((allow_new and p.startswith(allow_new))
                                           or (allow_change and p.startswith(allow_change)))]
    assert added == [], f"files made by a failing command: {added}"


def test_every_subcommand_and_issue_case_is_covered():
    cmds = {cs["argv"][0] for cs in CASES}
    assert cmds == {"train", "sample", "evaluate", "fid-stats", "convert"}
    for cmd in cmds:
        ids = [cs for cs in CASES if cs["argv"][0] == cmd]
        assert any(cs["code"] == 0 for cs in ids), f"no valid control for {cmd}"
        assert any(cs.get("full") for cs in ids) and any(cs.get("readonly") for cs in ids), cmd


def test_controls_wrote_what_they_should(results):
    """The valid controls did their job: the recipe travelled into the converted file, the raw export
    holds the raw weights, --force replaced the samples and removed the stale fid.json, and a run
    that had only config.json started from it."""
    from ddpm_ref.convert import unet_file_info
    from ddpm_ref.evaluate import load_model

    c, _, res = results
    info = unet_file_info(c / "o" / "ok_c.safetensors")
    assert info["recipe"]["diffusion"]["num_timesteps"] == 20 and info["weights"] == "ema"
    assert unet_file_info(c / "o" / "ok_c_raw.safetensors")["weights"] == "raw"
    raw = load_model(c / "o" / "ok_c_raw.safetensors", use_ema=False)[0]
    ref = load_model(c / "run", use_ema=False)[0]
    assert all(torch.equal(a, b) for a, b in zip(raw.parameters(), ref.parameters(), strict=True))
    assert not (c / "samples16" / "fid.json").exists() and "stale" in res["ok_sample_force"]["stdout"]
    assert (c / "o" / "ok_inprog" / "checkpoints" / "last.pt").is_file()
    assert "starting its run again" in res["ok_resume_from_config_json"]["stdout"]
    assert (c / "o" / "ok_e1" / "bpd.json").is_file() and (c / "o" / "ok_e2" / "fid.json").is_file()
    umask = os.umask(0)
    os.umask(umask)
    for f in ("o/ok_c.safetensors", "o/ok_f.npz", "o/ok_e1/bpd.json", "o/ok_s1/samples.npz", "o/ok_s1/samples.png",
              "o/ok_t/checkpoints/last.pt", "o/ok_t/config.json"):
        assert (c / f).stat().st_mode & 0o777 == 0o666 & ~umask, f  # the umask's mode, not mkstemp's 0600
