"""Timestep spacing: every convention's properties for EVERY K in 1..T (T = 1000, 50, 4000), the
refusals, and the CLI's --spacing.

The reference for each convention is written here from its definition (design.md section 9), in a
different form from ddpm_ref's: Python's exact ``round`` on Fractions instead of integer divmod, and
improved-diffusion's own search over strides instead of the closed form. diffusers' schedules are
compared in tests/test_oracle_diffusers.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from ddpm_ref.sampling import SPACINGS, respace, smallest_stride, space_timesteps, spacing_refusal

TS = (1000, 50, 4000)


def _first_stride_per_count(T):
    """improved-diffusion's rule by search: for each count K, the smallest stride s with
    len(range(0, T, s)) == K (strides up to T)."""
    first = {}
    for s in range(1, T + 1):
        first.setdefault(len(range(0, T, s)), s)
    return first


def _round(a, b, exact=False):
    """a / b rounded half to even: floor((2a + b) / 2b), one less on an odd tie (numpy ints), or
    with Python's exact round() on Fractions (slow: small T only)."""
    if exact:
        return [round(Fraction(int(x), b)) for x in a]
    r, m = np.divmod(2 * a + b, 2 * b)
    return (r - ((m == 0) & (r % 2 == 1))).tolist()


def _reference(T, K, spacing, first_stride):
    """(kept steps, stride, pinned ends) from the definitions; steps None when no stride gives K."""
    exact = T <= 50
    if spacing == "linspace":
        h = Fraction(T - 1, K - 1) if K > 1 else None
        return (_round((T - 1) * np.arange(K), K - 1, exact) if K > 1 else [0]), h, {0, T - 1}
    if spacing == "trailing":
        h = Fraction(T, K)
        return [v - 1 for v in _round(T * np.arange(1, K + 1), K, exact)], h, {T - 1}
    if spacing == "leading":
        return [j * (T // K) for j in range(K)], Fraction(T // K), {0}
    s = first_stride.get(K)
    return (list(range(0, T, s)) if s else None), (Fraction(s) if s else None), {0}


def _documented_refusal(T, K, spacing, ref_steps):
    if spacing == "trailing":
        return False
    if K == 1 and T > 1:  # the 0-pinned conventions would keep t = 0 alone
        return True
    if spacing == "leading":
        return T % K > 1  # it ends T // K + (T mod K) - 1 below T - 1
    if spacing == "stride":
        return ref_steps is None
    return False


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_K(T, spacing):
    first = _first_stride_per_count(T) if spacing == "stride" else None
    refused = []
    for K in range(1, T + 1):
        ref, h, pins = _reference(T, K, spacing, first)
        why = spacing_refusal(T, K, spacing)
        assert (why is not None) == _documented_refusal(T, K, spacing, ref), (T, K, spacing, why)
        if why is not None:
            refused.append(K)
            with pytest.raises(ValueError) as e:
                space_timesteps(T, K, spacing)
            assert str(e.value).startswith(f"spacing '{spacing}' with K = {K} of T = {T}: {why}; use spacing")
            if ref is not None:  # allow_short keeps a chain that exists but stops short
                assert space_timesteps(T, K, spacing, allow_short=True) == ref
            continue
        steps = space_timesteps(T, K, spacing)
        assert steps == ref, (T, K, spacing)
        assert len(steps) == K and len(set(steps)) == K  # K distinct steps
        assert steps == sorted(steps) and 0 <= steps[0] and steps[-1] <= T - 1  # ascending, in [0, T)
        assert {0, T - 1} & set(steps) >= pins  # the documented end(s) pinned
        assert (T - 1) - steps[-1] <= h  # the sampler starts within one stride of T - 1
        gaps = np.diff(steps)
        if K > 1:  # evenly spread: every gap is the stride rounded down or up
            assert gaps.min() >= h.numerator // h.denominator and gaps.max() <= -(-h.numerator // h.denominator)
    if spacing == "trailing":
        assert refused == []
    if spacing == "linspace":
        assert refused == [1]


def test_refused_K_for_T_1000_and_the_examples_of_the_bug():
    T = 1000
    leading = [K for K in range(1, T + 1) if spacing_refusal(T, K, "leading")]
    stride = [K for K in range(1, T + 1) if spacing_refusal(T, K, "stride")]
    # leading reaches the top only when K divides T or T - 1: 22 of the 1000 K
    assert [K for K in range(1, T + 1) if K not in leading] == [
        2, 3, 4, 5, 8, 9, 10, 20, 25, 27, 37, 40, 50, 100, 111, 125, 200, 250, 333, 500, 999, 1000]
    assert len(stride) == 938 and 600 in stride and 64 in stride and 30 not in stride
    # the pre-fix "ddimK" was leading cut to K: where it ended (the numbers)
    old_end = {K: space_timesteps(T, K, "leading", allow_short=True)[-1] for K in (30, 64, 300, 600)}
    assert old_end == {30: 957, 64: 945, 300: 897, 600: 599}
    # "ddimK" is now improved-diffusion's rule: K = 30 ends at 986; K = 600 is refused
    assert space_timesteps(T, "ddim30")[-1] == 986 and space_timesteps(T, "ddim50") == list(range(0, T, 20))
    with pytest.raises(ValueError, match="no integer stride keeps exactly 600 of 1000 steps"):
        space_timesteps(T, "ddim600")
    assert space_timesteps(T, 30, "trailing")[-1] == space_timesteps(T, 30, "linspace")[-1] == 999


def test_smallest_stride_closed_form_matches_the_search():
    for T in (1, 2, 7, 50, 1000):
        first = _first_stride_per_count(T)
        for K in range(1, T + 1):
            assert smallest_stride(T, K) == first.get(K), (T, K)


def test_spec_forms_and_bad_inputs():
    assert space_timesteps(1000, 5) == [0, 250, 500, 749, 999]  # an int K alone: linspace (the library default)
    assert space_timesteps(10, [9, 0, 3]) == [0, 3, 9]
    assert respace(_base(), 10, "trailing").timestep_map.tolist() == list(range(99, 1000, 100))
    assert space_timesteps(1, 1, "leading") == [0]  # T = 1: t = 0 is the top
    for args, match in [
        ((10, "ddimx"), "look like 'ddim50'"),
        ((10, "ddim5", "trailing"), "is the 'stride' spacing"),
        ((10, [1, 2], "trailing"), "applies to a number of steps"),
        ((10, 3, "quad"), "spacing must be one of"),
        ((10, 0, "trailing"), "cannot keep 0 of 10"),
        ((10, 11, "linspace"), "cannot keep 11 of 10"),
        ((0, 1), "num_timesteps must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            space_timesteps(*args)
    # the hint names only conventions that accept K
    with pytest.raises(ValueError, match=r"use spacing 'trailing' \(ending at t = T - 1\)"):
        space_timesteps(1000, 1, "linspace")


def _base():
    from ddpm_ref.diffusion import make_diffusion

    return make_diffusion("linear", 1000)


# ------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A converted 16x16 U-Net with its config (T = 1000) beside it: enough for `sample` to load."""
    from ddpm_ref.config import apply_overrides, get_config, save_config
    from ddpm_ref.convert import save_unet

    d = tmp_path_factory.mktemp("spacing_model")
    cfg = apply_overrides(get_config("tiny"), ["model.unet=tiny16"])
    save_config(cfg, d / "config.json")
    save_unet(cfg.build_model().eval(), d / "ema.safetensors")
    return d


COMMON = ["--device", "cpu", "--no-progress", "--threads", "1"]


def test_cli_refuses_a_spacing_that_misses_the_top_in_one_line(model_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "ddpm_ref", "sample", "--checkpoint", str(model_dir / "ema.safetensors"),
         "--out", str(tmp_path / "s"), "--sampler", "ddim", "--steps", "600", "--spacing", "leading", *COMMON],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: --spacing leading --steps 600 (T = 1000): the kept steps end at t = 599")
    assert "use --spacing trailing or linspace" in lines[0]
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "64", "--spacing", "stride"], "no integer stride keeps exactly 64 of 1000 steps"),
        (["--steps", "30", "--spacing", "leading"], "the kept steps end at t = 957, 42 steps below"),
        (["--steps", "1", "--spacing", "linspace"], "use --spacing trailing (ending at t = 999)"),
        (["--sampler", "ddim", "--steps", "10", "--eta", "3"], "--eta 3: with 10 DDIM steps"),
    ],
)
def test_cli_bad_spacing_or_eta(model_dir, tmp_path, capsys, extra, message):
    from ddpm_ref.__main__ import main

    code = main(["sample", "--checkpoint", str(model_dir / "ema.safetensors"), "--out", str(tmp_path / "s"),
                 "--num-samples", "1", *extra, *COMMON])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    # the same refusal through evaluate --metric fid (before any sample or statistic is made)
    if "--eta" not in extra:
        code = main(["evaluate", "--metric", "fid", "--checkpoint", str(model_dir / "ema.safetensors"),
                     "--ref-stats", str(tmp_path / "none.npz"), "--num-samples", "1", *extra, *COMMON])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, err


def test_cli_default_spacing_keeps_the_top(model_dir, tmp_path, capsys):
    from ddpm_ref.__main__ import _SPACINGS, build_parser, main
    from ddpm_ref.evaluate import DEFAULT_SPACING, _sampling_process

    assert set(_SPACINGS) == set(SPACINGS)
    for cmd in (["sample", "--checkpoint", "c", "--out", "o"], ["evaluate"]):
        assert build_parser().parse_args(cmd).spacing == DEFAULT_SPACING == "trailing"
    base = _base()
    for sampler in ("ancestral", "ddim"):
        for K in range(1, 1000):  # the default keeps t = T - 1 for every K
            assert _sampling_process(base, sampler, K).timestep_map[-1] == 999
    assert main(["sample", "--checkpoint", str(model_dir / "ema.safetensors"), "--out", str(tmp_path / "s"),
                 "--num-samples", "1", "--sampler", "ddim", "--steps", "3", *COMMON]) == 0
    capsys.readouterr()
    with np.load(tmp_path / "s" / "samples.npz") as f:
        meta = json.loads(str(f["meta"]))
    assert meta["spacing"] == "trailing" and meta["steps"] == 3
