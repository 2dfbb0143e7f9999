"""The recipe dataclasses: paper values, presets, JSON round trip, overrides, validation."""

from __future__ import annotations

import json

import pytest

from ddpm_ref.config import (
    RESUME_SAFE_KEYS,
    Config,
    apply_overrides,
    changed_keys,
    config_from_dict,
    config_to_dict,
    get_config,
    load_config,
    save_config,
    validate_config,
)
from ddpm_ref.unet import count_parameters


def test_cifar10_preset_is_the_paper_recipe():
    c = validate_config(get_config("cifar10"))
    # Section 4 / Appendix B of Ho et al. (2020) and the original run_cifar.py defaults
    assert (c.optim.lr, c.optim.beta1, c.optim.beta2, c.optim.eps) == (2e-4, 0.9, 0.999, 1e-8)
    assert c.optim.weight_decay == 0.0 and c.optim.warmup_steps == 5000 and c.optim.grad_clip == 1.0
    assert c.train.batch_size == 128 and c.train.total_steps == 800_000
    assert c.train.ema_decay == 0.9999 and c.train.random_flip is True
    assert c.model.unet == "cifar10" and c.model.dropout == 0.1
    d = c.diffusion
    assert (d.schedule, d.num_timesteps, d.beta_start, d.beta_end) == ("linear", 1000, 1e-4, 0.02)
    assert (d.model_mean_type, d.model_var_type, d.loss_type) == ("eps", "fixedlarge", "mse")
    kw = c.unet_kwargs()
    assert kw["out_channels"] == 3 and kw["dropout"] == 0.1
    assert count_parameters("cifar10", out_channels=3, dropout=0.1) == 35_746_307


def test_tiny_preset_is_small_and_valid():
    c = validate_config(get_config("tiny"))
    assert c.data == "sample" and c.model.unet == "tiny"
    assert c.diffusion.num_timesteps == 1000  # the paper's process, only the network/length shrink
    assert count_parameters("tiny") < 1_000_000
    assert c.train.total_steps <= 5000


def test_presets_are_fresh_copies():
    a = get_config("cifar10")
    a.optim.lr = 1.0
    assert get_config("cifar10").optim.lr == 2e-4


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown config preset"):
        get_config("imagenet")
    with pytest.raises(ValueError, match="preset"):
        load_config("imagenet")


def test_learned_variance_doubles_output_channels():
    c = apply_overrides(get_config("tiny"), ["diffusion.model_var_type=learned_range", "diffusion.loss_type=hybrid"])
    validate_config(c)
    assert c.unet_kwargs()["out_channels"] == 6
    assert c.build_diffusion().model_output_channels(3) == 6


def test_json_round_trip(tmp_path):
    c = apply_overrides(get_config("tiny"), ["model.ch_mult=1,2", "model.attn_resolutions=[]", "train.seed=7"])
    path = save_config(c, tmp_path / "sub" / "c.json")
    d = json.loads(path.read_text())
    assert d["model"]["ch_mult"] == [1, 2] and d["model"]["attn_resolutions"] == []
    back = load_config(path)
    assert back == c and isinstance(back.model.ch_mult, tuple)
    assert config_from_dict(config_to_dict(c)) == c


def test_partial_json_keeps_paper_defaults(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"optim": {"lr": 1e-4}}))
    c = load_config(p)
    assert c.optim.lr == 1e-4 and c.optim.warmup_steps == 5000 and c.train.batch_size == 128


@pytest.mark.parametrize(
    "d, match",
    [
        ({"optimizer": {}}, "unknown config key"),
        ({"optim": {"learning_rate": 1}}, "unknown key"),
        ({"optim": {"lr": "fast"}}, "optim.lr: must be a number"),
        ({"train": {"batch_size": 1.5}}, "train.batch_size: must be an integer"),
        ({"train": {"random_flip": 1}}, "true or false"),
        ({"model": {"ch_mult": [1, "2"]}}, "list of ints"),
        ({"model": []}, "must be an object"),
        ([], "JSON object"),
    ],
)
def test_config_from_dict_errors(d, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(d)


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not a JSON config \(JSONDecodeError"):
        load_config(bad)


def test_overrides_parse_types():
    c = apply_overrides(
        get_config("cifar10"),
        [
            "optim.lr=1e-4",
            "train.total_steps=800_000",
            "train.log_every=1e3",
            "train.random_flip=false",
            "model.ch_mult=(1, 2, 2)",
            "model.ch=none",
            "data=folder:/x",
            "name=mine",
        ],
    )
    assert c.optim.lr == 1e-4 and c.train.total_steps == 800_000 and c.train.log_every == 1000
    assert c.train.random_flip is False and c.model.ch_mult == (1, 2, 2) and c.model.ch is None
    assert c.data == "folder:/x" and c.name == "mine"
    c2 = apply_overrides(c, {"optim.lr": 3e-4, "train.random_flip": True})
    assert c2.optim.lr == 3e-4 and c2.train.random_flip is True and c.optim.lr == 1e-4


@pytest.mark.parametrize(
    "item, match",
    [
        ("optim.lr", "section.field=value"),
        ("optim.foo=1", "unknown field 'foo'"),
        ("optimizer.lr=1", "unknown config section"),
        ("lr=1", "unknown config key"),
        ("optim.lr=fast", "expects a number"),
        ("train.batch_size=12.5", "expects an integer"),
        ("train.random_flip=maybe", "true/false"),
        ("model.ch_mult=1,x", "comma-separated integers"),
    ],
)
def test_override_errors(item, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(get_config("tiny"), [item])


@pytest.mark.parametrize(
    "item, match",
    [
        ("model.dropout=1.0", "model.dropout: must be <"),
        ("model.dropout=-0.1", "model.dropout: must be >="),
        ("diffusion.model_mean_type=x0", "model_mean_type: must be one of"),
        ("diffusion.model_var_type=big", "model_var_type: must be one of"),
        ("diffusion.loss_type=l1", "loss_type: must be one of"),
        ("diffusion.loss_type=hybrid", "invalid diffusion config"),  # hybrid needs a learned variance
        ("diffusion.schedule=zigzag", "invalid diffusion config"),
        ("diffusion.num_timesteps=0", "num_timesteps: must be an integer >= 1"),
        ("diffusion.beta_end=1.5", "beta_end: must be <="),
        ("optim.lr=0", "optim.lr: must be >"),
        ("optim.lr=nan", "finite"),
        ("optim.beta2=1", "optim.beta2: must be <"),
        ("optim.warmup_steps=-1", "warmup_steps: must be an integer >= 0"),
        ("optim.grad_clip=-1", "grad_clip: must be >="),
        ("train.batch_size=0", "batch_size: must be an integer >= 1"),
        ("train.ema_decay=1.5", "ema_decay: must be <="),
        ("train.seed=-3", "seed: must be an integer >= 0"),
        ("train.log_every=0", "log_every"),
        ("train.sample_timesteps=-1", "sample_timesteps: must be an integer >= 0"),
        ("model.ch=30", "invalid model config"),  # GroupNorm(32) needs widths divisible by 32
        ("model.unet=huge", "invalid model config"),
        ("model.resolution=31", "invalid model config"),
        ("data=", "data: must be a non-empty string"),
    ],
)
def test_validation_names_the_field(item, match):
    c = apply_overrides(get_config("tiny"), [item])
    with pytest.raises(ValueError, match=match):
        validate_config(c)


def test_validate_rejects_non_config():
    with pytest.raises(ValueError, match="expected a Config"):
        validate_config({"optim": {}})
    assert isinstance(validate_config(Config()), Config)


def test_changed_keys_and_resume_safe_keys():
    a = get_config("tiny")
    b = apply_overrides(a, ["train.total_steps=99", "optim.lr=5e-4", "data=sample:test"])
    assert set(changed_keys(a, b)) == {"train.total_steps", "optim.lr", "data"}
    assert "train.total_steps" in RESUME_SAFE_KEYS and "optim.lr" not in RESUME_SAFE_KEYS
    assert changed_keys(a, get_config("tiny")) == []
