"""Atomic checkpoint writes (simulated crashes), safe loading, RNG state round trips."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ddpm_ref import checkpoint as ck
from ddpm_ref.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    atomic_save,
    capture_global_rng,
    load_checkpoint,
    restore_global_rng,
)


def _fake_checkpoint(step: int) -> dict:
    """A structurally complete checkpoint dict (small tensors)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "step": step,
        "config": {"name": "test"},
        "model": {"w": torch.full((3, 3), float(step))},
        "ema": {"w": torch.full((3, 3), step + 0.5)},
        "optimizer": {"state": {}, "param_groups": []},
        "data_stream": {"epoch": 0, "position": step},
        "generator": torch.Generator().manual_seed(step).get_state(),
        "rng": [capture_global_rng()],
        "world_size": 1,
    }


def test_round_trip_with_weights_only(tmp_path):
    path = atomic_save(_fake_checkpoint(3), tmp_path / "a" / "last.pt")
    obj = torch.load(path, weights_only=True)  # only tensors and primitives inside
    assert obj["step"] == 3 and torch.equal(obj["model"]["w"], torch.full((3, 3), 3.0))
    assert load_checkpoint(path)["data_stream"] == {"epoch": 0, "position": 3}
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save(_fake_checkpoint(1), path)
    before = path.read_bytes()
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        # write a real, partial checkpoint, then die half-way
        import io

        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        atomic_save(_fake_checkpoint(2), path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # temp file removed


def test_kill_during_save_keeps_previous_checkpoint(tmp_path):
    """A process killed mid-write (no exception handling runs) leaves last.pt readable."""
    path = tmp_path / "last.pt"
    atomic_save(_fake_checkpoint(1), path)
    script = textwrap.dedent(
        f"""
        import os, torch
        from ddpm_ref import checkpoint as ck

        def dying_save(obj, f, *a, **k):
            f.write(b"PK\\x03\\x04 partial zip data")
            f.flush()
            os._exit(9)  # like SIGKILL: no cleanup, no finally blocks

        torch.save = dying_save
        ck.atomic_save({{"step": 2}}, {str(path)!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert load_checkpoint(path)["step"] == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.pt.") and leftovers[0].endswith(".tmp")


def test_truncated_file_gives_clear_error(tmp_path):
    path = atomic_save(_fake_checkpoint(5), tmp_path / "c.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"c\.pt: not a readable torch checkpoint: its zip archive is truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"text\.pt: not a torch checkpoint \(it starts like a text file"):
        load_checkpoint(tmp_path / "text.pt")


def test_not_a_training_checkpoint(tmp_path):
    p = tmp_path / "w.pt"
    torch.save({"weight": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match="not a ddpm_ref training checkpoint"):
        load_checkpoint(p)
    assert "weight" in load_checkpoint(p, check=False)
    bad = _fake_checkpoint(1)
    del bad["ema"]
    torch.save(bad, p)
    with pytest.raises(CheckpointError, match=r"lacks entries \['ema'\]"):
        load_checkpoint(p)
    bad = _fake_checkpoint(1)
    bad["version"] = 99
    torch.save(bad, p)
    with pytest.raises(CheckpointError, match="unsupported checkpoint version"):
        load_checkpoint(p)
    assert issubclass(CheckpointError, ValueError)


def test_pickled_code_is_refused(tmp_path):
    """weights_only loading: a file that would run code on unpickling is rejected."""
    p = tmp_path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": FORMAT, "payload": Evil()}, p)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(p)


def test_global_rng_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's legacy state
    state = capture_global_rng()
    # survive a weights_only save/load
    path = atomic_save({"rng": [state]}, tmp_path / "rng.pt")
    state = torch.load(path, weights_only=True)["rng"][0]
    expected = (torch.rand(4), np.random.standard_normal(3), [random.random() for _ in range(3)], random.gauss(0, 1))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_global_rng(state)
    got = (torch.rand(4), np.random.standard_normal(3), [random.random() for _ in range(3)], random.gauss(0, 1))
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2] and expected[3] == got[3]


def test_numpy_and_python_state_conversions_are_exact():
    np.random.seed(5)
    d = ck.numpy_rng_to_dict()
    assert d["keys"].dtype == torch.int64 and d["keys"].shape == (624,)
    a = np.random.rand(5)
    ck.numpy_rng_from_dict(d)
    assert np.array_equal(a, np.random.rand(5))
    random.seed(6)
    random.gauss(0, 1)  # sets gauss_next
    p = ck.python_rng_to_dict()
    assert p["gauss_next"] is not None and p["state"].shape == (625,)
    b = [random.gauss(0, 1) for _ in range(3)]
    ck.python_rng_from_dict(p)
    assert b == [random.gauss(0, 1) for _ in range(3)]
