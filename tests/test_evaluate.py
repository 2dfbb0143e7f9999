"""Evaluation: model loading (EMA), bits/dim with its breakdown, samples, FID plumbing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddpm_ref.config import apply_overrides, get_config
from ddpm_ref.data import from_uint8, load_sample
from ddpm_ref.evaluate import (
    compute_fid,
    evaluate_bpd,
    generate_samples,
    load_model,
    load_samples,
    reference_statistics,
    save_bpd,
    save_samples,
)
from ddpm_ref.train import Trainer, derive_seed

pytestmark = pytest.mark.usefixtures("one_thread")


def _images16(x):
    return x.reshape(-1, 16, 2, 16, 2, 3).astype(np.float64).mean(axis=(2, 4)).round().astype(np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 16x16 model trained for 3 steps with T = 20; returns (checkpoint path, trainer)."""
    out = tmp_path_factory.mktemp("run")
    cfg = apply_overrides(get_config("tiny"), [
        "model.unet=tiny16", "diffusion.num_timesteps=20", "train.batch_size=8", "train.total_steps=3",
        "train.sample_every=0", "train.log_every=1", "optim.warmup_steps=0", "train.ema_decay=0.5",
    ])  # fmt: skip
    tr = Trainer(cfg, out, images=_images16(load_sample("train")[0][:64]), device="cpu", progress=False,
                 tensorboard=False)
    tr.fit()
    tr.close()
    return out / "checkpoints" / "last.pt", tr


def test_load_model_uses_the_ema_weights(run):
    path, tr = run
    model, diffusion, cfg, info = load_model(path)
    assert info == {"path": str(path), "step": 3, "weights": "ema", "recipe": "checkpoint"}
    assert not model.training and diffusion.num_timesteps == 20 and cfg.model.unet == "tiny16"
    for a, b in zip(model.parameters(), tr.ema.parameters(), strict=True):
        assert torch.equal(a, b)
    raw, _, _, info = load_model(path, use_ema=False)
    assert info["weights"] == "raw"
    for a, b in zip(raw.parameters(), tr.model.parameters(), strict=True):
        assert torch.equal(a, b.detach())
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), raw.parameters(), strict=True))


def test_load_converted_model(run, tmp_path):
    from ddpm_ref.convert import save_unet

    path, tr = run
    st = save_unet(tr.ema, tmp_path / "m.safetensors")
    model, diffusion, cfg, info = load_model(st, config=tr.config)
    assert info["weights"] == "converted" and diffusion.num_timesteps == 20
    x = torch.zeros(2, 3, 16, 16)
    t = torch.tensor([0, 19])
    torch.testing.assert_close(model(x, t), tr.ema(x, t))
    learned = apply_overrides(tr.config, ["diffusion.model_var_type=learned_range", "diffusion.loss_type=hybrid"])
    with pytest.raises(ValueError, match="outputs 3 channels but the recipe's diffusion"):
        load_model(st, config=learned)
    with pytest.raises(ValueError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="checkpoint not found"):
        load_model(tmp_path / "missing.pt")


def test_load_model_from_a_folder_or_with_a_sibling_config(run, tmp_path):
    from ddpm_ref.config import save_config
    from ddpm_ref.convert import save_unet

    path, tr = run
    folder = tmp_path / "shipped"
    save_unet(tr.ema, folder / "ema.safetensors")
    save_config(tr.config, folder / "config.json")
    for target in (folder, folder / "ema.safetensors"):  # the diffusion comes from config.json (T = 20)
        model, diffusion, cfg, info = load_model(target)
        assert diffusion.num_timesteps == 20 and info["path"] == str(folder / "ema.safetensors")
    # a run directory means its last checkpoint
    _, _, _, info = load_model(path.parent.parent)
    assert info["path"] == str(path) and info["weights"] == "ema"
    # config as a path or preset name
    assert load_model(folder / "ema.safetensors", config=folder / "config.json")[1].num_timesteps == 20
    # no recipe anywhere: refused (a guessed schedule would give wrong samples silently)
    alone = save_unet(tr.ema, tmp_path / "alone" / "m.safetensors")
    with pytest.raises(ValueError, match=r"m\.safetensors: records no diffusion recipe .*pass --config"):
        load_model(alone)
    assert load_model(alone, config="cifar10")[1].num_timesteps == 1000  # unless one is given
    with pytest.raises(ValueError, match="directory without ema.safetensors"):
        load_model(tmp_path / "alone")


def test_recipe_in_the_file_and_no_ema(run, tmp_path):
    """A .safetensors carrying its recipe needs no other file; --no-ema is honoured only where raw
    weights exist (a folder's raw.safetensors, a training checkpoint), refused elsewhere."""
    from ddpm_ref.convert import save_unet

    path, tr = run
    folder = tmp_path / "f"
    save_unet(tr.ema, folder / "ema.safetensors", recipe=tr.config, weights="ema")
    model, diffusion, cfg, info = load_model(folder)
    assert diffusion.num_timesteps == 20 and info["recipe"] == "file" and info["weights"] == "ema"
    with pytest.raises(ValueError, match="holds only EMA weights.*drop --no-ema"):
        load_model(folder, use_ema=False)
    with pytest.raises(ValueError, match="holds EMA weights, and --no-ema needs the raw ones"):
        load_model(folder / "ema.safetensors", use_ema=False)
    save_unet(tr.model, folder / "raw.safetensors", recipe=tr.config, weights="raw")
    raw, _, _, info = load_model(folder, use_ema=False)
    assert info["weights"] == "raw" and info["path"].endswith("raw.safetensors")
    for a, b in zip(raw.parameters(), tr.model.parameters(), strict=True):
        assert torch.equal(a, b.detach())
    assert any(not torch.equal(a, b) for a, b in zip(raw.parameters(), model.parameters(), strict=True))


def test_bpd_breakdown_adds_up_and_matches_calc_bpd_loop(run):
    path, _ = run
    model, diffusion, _, _ = load_model(path)
    images = _images16(load_sample("test")[0][:5])
    res = evaluate_bpd(model, diffusion, images, batch_size=3, seed=7, progress=False)
    T = diffusion.num_timesteps
    assert res["num_images"] == 5 and res["num_timesteps"] == T
    pi, pt = res["per_image"], res["per_t"]
    assert all(v.shape == (5,) for v in pi.values()) and all(v.shape == (T,) for v in pt.values())
    # total = L_T + L_0 + sum of the KL terms, per image and on average
    np.testing.assert_allclose(pi["total_bpd"], pi["prior_bpd"] + pi["decoder_bpd"] + pi["kl_bpd"], rtol=1e-12)
    assert res["bpd"] == pytest.approx(res["prior_bpd"] + res["decoder_bpd"] + res["kl_bpd"], rel=1e-12)
    assert res["bpd"] == pytest.approx(pt["terms_bpd"].sum() + res["prior_bpd"], rel=1e-12)
    assert res["decoder_bpd"] == pytest.approx(pt["terms_bpd"][0], rel=1e-12)
    assert np.isfinite(res["bpd"]) and res["bpd"] > 0 and res["bpd_stderr"] > 0
    # the wiring: batch 1 (images 3..4) equals calc_bpd_loop with that batch's generator
    g = torch.Generator().manual_seed(derive_seed(7, 11, 1))
    with torch.no_grad():
        direct = diffusion.calc_bpd_loop(model, from_uint8(images[3:5]), generator=g)
    np.testing.assert_allclose(pi["total_bpd"][3:], direct["total_bpd"].double().numpy(), rtol=1e-6)
    # deterministic for a seed, different for another
    again = evaluate_bpd(model, diffusion, images, batch_size=3, seed=7, progress=False)
    assert np.array_equal(again["per_image"]["total_bpd"], pi["total_bpd"])
    other = evaluate_bpd(model, diffusion, images, batch_size=3, seed=8, progress=False)
    assert not np.array_equal(other["per_image"]["total_bpd"], pi["total_bpd"])


def test_bpd_input_checks(run):
    path, _ = run
    model, diffusion, _, _ = load_model(path)
    with pytest.raises(ValueError, match="uint8"):
        evaluate_bpd(model, diffusion, np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_bpd(model, diffusion, np.zeros((2, 16, 16, 3), np.uint8), batch_size=0)
    with pytest.raises(ValueError, match="GaussianDiffusion"):
        evaluate_bpd(model, "not a diffusion", np.zeros((2, 16, 16, 3), np.uint8))


def test_save_bpd(run, tmp_path):
    path, _ = run
    model, diffusion, _, _ = load_model(path)
    res = evaluate_bpd(model, diffusion, _images16(load_sample("test")[0][:2]), progress=False)
    j, n = save_bpd(res, tmp_path / "e", meta={"checkpoint": str(path)})
    d = json.loads(j.read_text())
    assert d["bpd"] == res["bpd"] and d["checkpoint"] == str(path) and "per_image" not in d
    with np.load(n) as f:
        assert f["t_terms_bpd"].shape == (20,) and f["image_total_bpd"].shape == (2,)


def test_generate_samples_reproducible_and_batch_indexed(run):
    path, _ = run
    model, diffusion, _, _ = load_model(path)
    a = generate_samples(model, diffusion, 5, batch_size=2, seed=3, progress=False)
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.uint8
    b = generate_samples(model, diffusion, 4, batch_size=2, seed=3, progress=False)
    assert np.array_equal(a[:4], b)  # full batch i always uses the noise of (seed, i)
    c = generate_samples(model, diffusion, 4, batch_size=2, seed=4, progress=False)
    assert not np.array_equal(b, c)
    d = generate_samples(model, diffusion, 2, sampler="ddim", steps=5, progress=False)
    e = generate_samples(model, diffusion, 2, sampler="ddim", steps=5, progress=False)
    assert d.shape == (2, 16, 16, 3) and np.array_equal(d, e)
    f = generate_samples(model, diffusion, 2, sampler="ancestral", steps=4, progress=False)
    assert f.shape == (2, 16, 16, 3)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"sampler": "euler"}, "sampler must be"),
        ({"steps": 0}, r"steps must be an int in \[1, 20\]"),
        ({"steps": 21}, "steps must be"),
        ({"eta": -1.0}, "eta must be >= 0"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_generate_samples_errors(run, kw, match):
    model, diffusion, _, _ = load_model(run[0])
    with pytest.raises(ValueError, match=match):
        generate_samples(model, diffusion, 2, progress=False, **kw)
    with pytest.raises(ValueError, match="num must be a positive int"):
        generate_samples(model, diffusion, 0)


def test_save_and_load_samples(tmp_path):
    x = load_sample("test")[0][:10]
    npz, png = save_samples(x, tmp_path / "s", meta={"seed": 1}, grid_size=4)
    assert np.array_equal(load_samples(npz), x) and png.is_file()
    with np.load(npz) as f:
        assert json.loads(str(f["meta"])) == {"seed": 1}
    np.savez(tmp_path / "other.npz", arr=x)
    assert np.array_equal(load_samples(tmp_path / "other.npz"), x)
    np.savez(tmp_path / "bad.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="no 'images' array"):
        load_samples(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="not found"):
        load_samples(tmp_path / "none.npz")
    with pytest.raises(ValueError, match="uint8"):
        save_samples(x.astype(np.float32), tmp_path / "t")


def test_reference_statistics_refuse_lossy_folders(tmp_path):
    from PIL import Image

    (tmp_path / "jpg" / "cat").mkdir(parents=True)
    for i, img in enumerate(load_sample("test")[0][:3]):
        Image.fromarray(img).save(tmp_path / "jpg" / "cat" / f"{i}.jpg", quality=75)
    with pytest.raises(ValueError, match="not pixel-exact"):
        reference_statistics(f"folder:{tmp_path / 'jpg'}", progress=False)
    with pytest.raises(ValueError, match="--num-images 1: must lie"):
        reference_statistics("sample:test", num_images=1, progress=False)


@pytest.mark.parametrize("real_inception", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_fid_of_a_set_against_its_own_statistics_is_zero(tmp_path, real_inception, toy_feature_net):
    from ddpm_ref.fid import save_statistics

    weights = None if real_inception else toy_feature_net
    n = 6 if real_inception else 40
    stats = reference_statistics("sample:test", num_images=n, batch_size=n, progress=False, weights=weights)
    assert stats.n == n and stats.pixel_exact and "sample:test" in stats.source
    path = save_statistics(tmp_path / "ref.npz", stats)
    images = load_sample("test")[0][:n]
    assert compute_fid(images, path, batch_size=n, progress=False, weights=weights) == pytest.approx(0.0, abs=1e-3)
    other = load_sample("train")[0][:n]
    assert compute_fid(other, stats, batch_size=n, progress=False, weights=weights) > 1e-2


@pytest.mark.parametrize("T, K", [(1000, 1000), (1000, 50), (1000, 10), (20, 5), (100, 2)])
def test_ddim_max_eta_is_where_sigma_reaches_the_direction_budget(T, K):
    """DDIM eq. 12 needs sigma_t^2 <= 1 - abar_{t-1} at every step; with sigma_t from DDIM eq. 16 computed
    directly here, eta_max is the largest eta that keeps it (just below: all steps fit; just above: one does
    not), and eta <= 1 always fits. generate_samples refuses an eta above it."""
    from ddpm_ref import make_diffusion
    from ddpm_ref.sampling import ddim_max_eta, respace

    d = make_diffusion("linear", T)
    proc = d if K == T else respace(d, f"ddim{K}")
    ab, prev = np.asarray(proc.alphas_cumprod), np.asarray(proc.alphas_cumprod_prev)

    def worst(eta):  # max over steps of sigma_t^2 - (1 - abar_{t-1})
        sigma2 = eta**2 * (1 - prev) / (1 - ab) * (1 - ab / prev)
        return float(np.max(sigma2 - (1 - prev)))

    e = ddim_max_eta(proc)
    assert e >= 1.0 and worst(1.0) <= 0
    assert worst(e * (1 - 1e-9)) <= 1e-15 and worst(e * (1 + 1e-6)) > 0
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match="--eta"):
        generate_samples(model, d, 1, sampler="ddim", steps=K, spacing="stride", eta=e * 1.001, image_size=4,
                         progress=False)
