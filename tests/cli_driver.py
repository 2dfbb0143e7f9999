"""Run ``python -m ddpm_ref`` cases, each in its own process, for ``tests/test_cli_errors.py``.

Usage: ``python tests/cli_driver.py CASES.json RESULTS.json WATCHED_DIR``.

The driver imports the package once and then forks one child process per case, so each case
has what a real invocation has -- its own exit code, its own stderr file descriptor, Python's
own traceback printing for an uncaught exception -- at the cost of a fork, not of a fresh
interpreter and torch import (about 3 s each). A case may ask for:

- ``env``: extra environment variables (e.g. ``RANK=1`` as torchrun sets it);
- ``full``: ``"rlimit"`` -- a file-size limit (``RLIMIT_FSIZE``, writes past it fail with
  EFBIG); ``"tmpfs"`` -- a 64 KiB tmpfs mounted on ``target`` in a private mount namespace
  (a real ENOSPC; needs root, else the case is reported as skipped);
- ``readonly``: the directory ``target`` made read-only: a read-only bind mount in a private
  mount namespace when run as root (EROFS), ``chmod 555`` otherwise (EACCES).

Before and after each case every file under WATCHED_DIR is fingerprinted (size, mode, mtime and
SHA-1), so the test can check that no pre-existing file was changed or removed.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import sys
import traceback
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18


def snapshot(root: Path) -> dict:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                st = p.stat()
                digest = hashlib.sha1(p.read_bytes()).hexdigest()
            except OSError:
                continue
            out[str(p)] = (st.st_size, st.st_mode, st.st_mtime_ns, digest)
    return out


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    return libc


def _private_namespace(libc) -> None:
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "making / private failed")


def _mount_tmpfs(target: str, size: str = "64k") -> None:
    libc = _libc()
    _private_namespace(libc)
    if libc.mount(b"tmpfs", target.encode(), b"tmpfs", 0, f"size={size}".encode()) != 0:
        raise OSError(ctypes.get_errno(), f"mount tmpfs on {target} failed")


def _mount_readonly(target: str) -> None:
    libc = _libc()
    _private_namespace(libc)
    t = target.encode()
    if libc.mount(t, t, None, MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), "bind mount failed")
    if libc.mount(None, t, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None) != 0:
        raise OSError(ctypes.get_errno(), "read-only remount failed")


def run_case(case: dict, workdir: Path) -> dict:
    from ddpm_ref.__main__ import main

    err_path = workdir / f"{case['id']}.stderr"
    out_path = workdir / f"{case['id']}.stdout"
    status_path = workdir / f"{case['id']}.setup"
    chmodded = None
    if case.get("readonly") and os.geteuid() != 0:
        chmodded = case["readonly"]
        os.chmod(chmodded, 0o555)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: one invocation of the command line
        code = 1
        try:
            with open(err_path, "wb") as e, open(out_path, "wb") as o:
                os.dup2(e.fileno(), 2)
                os.dup2(o.fileno(), 1)
            os.environ.update(case.get("env", {}))
            mode = "plain"
            try:
                if case.get("full") == "tmpfs":
                    _mount_tmpfs(case["target"])
                    mode = "tmpfs"
                if case.get("readonly") and os.geteuid() == 0:
                    _mount_readonly(case["readonly"])
                    mode = "readonly-mount"
            except OSError as exc:
                status_path.write_text(f"skip: {exc}")
                os._exit(0)
            if case.get("full") == "rlimit":
                limit = int(case.get("limit", 4096))
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
                mode = "rlimit"
            status_path.write_text(mode)
            try:
                code = main(case["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # what `python -m` would do with an uncaught exception
                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 1)
    _, status = os.waitpid(pid, 0)
    if chmodded:
        os.chmod(chmodded, 0o755)
    setup = status_path.read_text() if status_path.exists() else "unknown"
    return {
        "code": os.waitstatus_to_exitcode(status),
        "stderr": err_path.read_text(errors="replace"),
        "stdout": out_path.read_text(errors="replace"),
        "setup": setup,
    }


def main_driver(cases_file: str, results_file: str, watched: str) -> None:
    import torch

    torch.set_num_threads(1)
    # import everything the commands import, once, before forking
    import ddpm_ref.__main__  # noqa: F401
    import ddpm_ref.convert  # noqa: F401
    import ddpm_ref.evaluate  # noqa: F401
    import ddpm_ref.fid  # noqa: F401
    import ddpm_ref.train  # noqa: F401

    cases = json.loads(Path(cases_file).read_text())
    workdir = Path(results_file).parent / "driver"
    workdir.mkdir(exist_ok=True)
    root = Path(watched)
    results = {}
    for case in cases:
        before = snapshot(root)
        res = run_case(case, workdir)
        after = snapshot(root)
        res["changed"] = sorted(p for p in before if p in after and after[p] != before[p])
        res["removed"] = sorted(p for p in before if p not in after)
        res["added"] = sorted(p for p in after if p not in before)
        results[case["id"]] = res
    Path(results_file).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main_driver(*sys.argv[1:4])
