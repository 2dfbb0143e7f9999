"""The shipped tiny checkpoint: its README's commands give its config, its files are what it records.

``checkpoints/tiny_cifar10/README.md`` lists the exact commands that made the model. Run through the
real command-line parser (``--print-config``), the training command must produce exactly the
shipped ``config.json`` (the preset has changed since: 1000 steps and EMA 0.99, so the command must
say what the run used). The files must carry that recipe and their kind of weights, and their
SHA-256 must be the one ``run.json`` and the README record.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from ddpm_ref.__main__ import main

CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny_cifar10"


def _commands() -> list[list[str]]:
    text = (CKPT / "README.md").read_text()
    section = text.split("## Exact commands", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_train_command_gives_the_shipped_config(capsys):
    cmds = [c for c in _commands() if c[:3] == ["python", "-m", "ddpm_ref"]]
    train = [c[3:] for c in cmds if c[3] == "train"]
    assert len(train) == 1, train
    assert main([*train[0], "--print-config"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == json.loads((CKPT / "config.json").read_text())
    # the preset alone would not give it (the point of the explicit options)
    assert main(["train", "--config", "tiny", "--data", "sample", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) != got
    converts = [c[3:] for c in cmds if c[3] == "convert"]
    assert {("--no-ema" in c, c[c.index("--out") + 1]) for c in converts} == {
        (False, "checkpoints/tiny_cifar10/ema.safetensors"), (True, "checkpoints/tiny_cifar10/raw.safetensors")}


def test_shipped_files_are_self_contained_and_match_their_checksums():
    from ddpm_ref.convert import tensors_sha256, unet_file_info
    from ddpm_ref.evaluate import load_model

    run = json.loads((CKPT / "run.json").read_text())
    readme = (CKPT / "README.md").read_text()
    config = json.loads((CKPT / "config.json").read_text())
    for kind in ("ema", "raw"):
        data = (CKPT / f"{kind}.safetensors").read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        assert sha == run[f"{kind}_sha256"] and len(data) == run[f"{kind}_bytes"]
        # the README's provenance names this file's checksum (not only the replaced model's)
        assert re.search(rf"of\s+`{kind}.safetensors`: `{sha}`", readme), kind
        assert sha != run["replaces"][f"{kind}_sha256"] and run["replaces"][f"{kind}_sha256"] in readme
        info = unet_file_info(CKPT / f"{kind}.safetensors")
        assert info["recipe"] == config and info["weights"] == kind
    from safetensors.torch import load_file

    assert tensors_sha256(load_file(CKPT / "ema.safetensors")) == unet_file_info(CKPT / "ema.safetensors")[
        "tensors_sha256"]
    ema, diffusion, cfg, info = load_model(CKPT)
    raw, _, _, rinfo = load_model(CKPT, use_ema=False)  # --no-ema: the raw weights beside the EMA ones
    assert info["weights"] == "ema" and rinfo["weights"] == "raw" and rinfo["path"].endswith("raw.safetensors")
    assert diffusion.num_timesteps == config["diffusion"]["num_timesteps"] == 1000
    assert any(not torch.equal(a, b) for a, b in zip(ema.parameters(), raw.parameters(), strict=True))


@pytest.mark.parametrize("sampler", [["--steps", "2"], ["--sampler", "ddim", "--steps", "2", "--eta", "0.5"]])
def test_sample_with_and_without_ema_from_the_folder(tmp_path, capsys, sampler):
    """Case 6 of the hardening issue: --no-ema gave images byte-identical to the EMA ones."""
    import numpy as np

    common = ["--checkpoint", str(CKPT), "--num-samples", "2", *sampler, "--device", "cpu", "--no-progress",
              "--threads", "1"]
    assert main(["sample", *common, "--out", str(tmp_path / "e")]) == 0
    assert main(["sample", *common, "--no-ema", "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    with np.load(tmp_path / "e" / "samples.npz") as e, np.load(tmp_path / "r" / "samples.npz") as r:
        assert not np.array_equal(e["images"], r["images"])
        assert json.loads(str(r["meta"]))["checkpoint"]["weights"] == "raw"


def test_loss_log_is_the_runs_log_and_the_readme_quotes_it():
    """loss_log.csv: the training loop's log every 20 steps over the whole run; the README's loss figures
    (mean over steps 1-20 and over the last 200 steps) are read from it."""
    import numpy as np

    log = np.genfromtxt(CKPT / "loss_log.csv", delimiter=",", names=True)
    assert log.dtype.names == ("step", "loss", "grad_norm", "grad_norm_max", "lr", "steps_per_sec")
    run = json.loads((CKPT / "run.json").read_text())
    assert np.array_equal(log["step"], np.arange(20, run["steps"] + 1, 20))
    assert np.all(log["grad_norm"] <= log["grad_norm_max"]) and log["lr"].max() == 1e-3
    readme = (CKPT / "README.md").read_text()
    provenance = readme.split("## Provenance", 1)[1].split("**The earlier model.**", 1)[0]
    quoted = f"{log['loss'][0]:.3f} over steps 1-20, {log['loss'][-10:].mean():.4f} over the last 200 steps"
    assert quoted in " ".join(provenance.split()), quoted
