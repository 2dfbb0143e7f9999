"""File writing: atomic, the umask's mode, a failed write named in words; plain progress lines in logs."""

from __future__ import annotations

import errno
import io
import os

import pytest

from ddpm_ref._io import atomic_write, atomic_write_bytes, check_new_file, check_output_dir
from ddpm_ref._progress import PlainProgress, progress
from ddpm_ref.errors import OutputError, UsageError, describe_os_error, one_line


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_get_the_umask_mode(tmp_path, umask):
    from ddpm_ref.checkpoint import atomic_save

    old = os.umask(umask)
    try:
        a = atomic_write_bytes(tmp_path / "a.bin", b"x")
        b = atomic_save({"x": 1}, tmp_path / "sub" / "b.pt")
    finally:
        os.umask(old)
    for p in (a, b):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_names_the_cause(tmp_path):
    target = atomic_write_bytes(tmp_path / "t.bin", b"old")

    def full_disk(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as e:
        atomic_write(target, full_disk, what="checkpoint")
    msg = str(e.value)
    assert msg.startswith(f"{target}: cannot write the checkpoint (the previous file is unchanged): no space left")
    assert "--out" in msg and "\n" not in msg
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]

    def torch_style(f):  # torch raises RuntimeError("... file write failed") chained to the OSError
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos") from inner

    with pytest.raises(OutputError, match="no space left on the device"):
        atomic_write(target, torch_style)
    with pytest.raises(ValueError, match="not an io error"):  # other errors pass through unchanged
        atomic_write(target, lambda f: (_ for _ in ()).throw(ValueError("not an io error")))
    assert target.read_bytes() == b"old"


def test_error_words():
    assert describe_os_error(OSError(errno.EROFS, "x"))[0] == "read-only file system"
    assert one_line(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y")) == \
        "/x/y: No such file or directory"
    assert one_line(ValueError("a\nb")) == "a b"


def test_refusals_name_force_and_out(tmp_path):
    (tmp_path / "f.npz").write_bytes(b"")
    with pytest.raises(UsageError, match=r"f\.npz: already exists; pass --force"):
        check_new_file(tmp_path / "f.npz", force=False)
    assert check_new_file(tmp_path / "f.npz", force=True)
    with pytest.raises(UsageError, match="is a file, not a directory"):
        check_output_dir(tmp_path / "f.npz", ["x"], force=False)
    with pytest.raises(UsageError, match="is a file, not a directory"):
        check_output_dir(tmp_path / "f.npz" / "sub", ["x"], force=False)


def test_plain_progress_prints_whole_lines_at_tenths_and_at_the_end():
    buf = io.StringIO()
    bar = PlainProgress(total=20, desc="train", unit="step", file=buf, interval=1e9)
    for _ in range(20):
        bar.update(1)
    bar.set_postfix(loss="0.1")
    bar.close()
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue() and len(lines) == 10
    assert lines[0].startswith("train: 2/20 step (10.0%)") and lines[-1].startswith("train: 20/20 step (100.0%)")
    buf = io.StringIO()
    with PlainProgress(total=100, desc="x", file=buf, interval=1e9) as bar:
        bar.update(3)
    assert buf.getvalue().startswith("x: 3/100 it (3.0%)")  # the last count is printed on close


def test_progress_is_plain_when_stderr_is_not_a_terminal(capsys):
    assert isinstance(progress(total=3, desc="d"), PlainProgress)  # pytest's stderr is not a tty
    assert not isinstance(progress(total=3, desc="d", disable=True), PlainProgress)
