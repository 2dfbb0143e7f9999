"""Mutation check: does a one-line slip in ddpm_ref make a unit test AND a chapter check fail?

Each mutant below replaces one line (one exact snippet) of ddpm_ref with a plausible slip: a
coefficient, a sign, a padding side, an off-by-one. For each, this script copies the repository
(without .git, .venv, _build) to a scratch directory, applies the slip there, and runs

* the unit tests (``pytest -x``; the mutant's own test files first, then the rest), and
* the chapters the mutant names, executed top to bottom with nbclient, stopping at the first cell
  that raises (a failed assertion is a chapter check catching the slip; cells tagged
  ``raises-exception`` are allowed to raise, as in the book).

A mutant is *caught* when both a unit test and a chapter cell fail. It is not part of
``make test`` (a run takes tens of minutes); the last run's table is kept in
``benchmarks/mutants.md``.

    .venv/bin/python tools/mutants.py                      # all mutants
    .venv/bin/python tools/mutants.py --only posterior-coef2-sign,cosine-offset
    .venv/bin/python tools/mutants.py --list
    .venv/bin/python tools/mutants.py --markdown benchmarks/mutants.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  #: path under the repository root
    old: str  #: exact snippet, must occur exactly once in the file
    new: str
    what: str  #: the slip, in words
    tests: tuple[str, ...] = ()  #: unit-test files to run first
    notebooks: tuple[str, ...] = ()  #: chapters expected to catch it (stems under notebooks/)
    extra: dict = field(default_factory=dict)


MUTANTS: tuple[Mutant, ...] = (
    Mutant("alphabar-prev-padded-right", "ddpm_ref/diffusion.py",
           "self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])",
           "self.alphas_cumprod_prev = np.append(self.alphas_cumprod[1:], 1.0)",
           "alphabar_{t-1} padded on the wrong side", ("tests/test_diffusion.py",),
           ("02_posterior", "03_variational_bound")),
    Mutant("one-minus-alphabar-prev-shift", "ddpm_ref/diffusion.py",
           "one_minus_ab_prev = np.append(0.0, one_minus_ab[:-1])",
           "one_minus_ab_prev = np.append(0.0, one_minus_ab[1:])",
           "1 - alphabar_{t-1} off by one step", ("tests/test_diffusion.py",), ("02_posterior",)),
    Mutant("posterior-variance-swapped", "ddpm_ref/diffusion.py",
           "self.posterior_variance = betas * one_minus_ab_prev / one_minus_ab",
           "self.posterior_variance = betas * one_minus_ab / one_minus_ab_prev.clip(1e-20)",
           "beta-tilde with the ratio inverted", ("tests/test_diffusion.py",), ("02_posterior",)),
    Mutant("posterior-coef1-sqrt-missing", "ddpm_ref/diffusion.py",
           "self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / one_minus_ab",
           "self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev / one_minus_ab",
           "posterior mean coefficient of x_0 without its square root", ("tests/test_diffusion.py",),
           ("02_posterior",)),
    Mutant("x0-from-eps-sign", "ddpm_ref/diffusion.py",
           """            self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self.extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps""",
           """            self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            + self.extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps""",
           "x0 = (x_t + sqrt(1 - abar) eps) / sqrt(abar): sign of eps", ("tests/test_diffusion.py",),
           ("04_eps_parameterisation",)),
    Mutant("recipm1-without-sqrt", "ddpm_ref/diffusion.py",
           "self.sqrt_recipm1_alphas_cumprod = np.sqrt(one_minus_ab / self.alphas_cumprod)",
           "self.sqrt_recipm1_alphas_cumprod = one_minus_ab / self.alphas_cumprod",
           "sqrt(1/abar - 1) without the square root", ("tests/test_diffusion.py",),
           ("04_eps_parameterisation",)),
    Mutant("reverse-noise-scale", "ddpm_ref/diffusion.py",
           'sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise',
           'sample = out["mean"] + nonzero * torch.exp(out["log_variance"]) * noise',
           "Algorithm 2 adds sigma_t^2 z instead of sigma_t z", ("tests/test_sampling.py", "tests/test_diffusion.py"),
           ("06_training_and_sampling", "07_sampling_choices")),
    Mutant("kl-variance-ratio", "ddpm_ref/likelihood.py",
           "+ (mean1 - mean2) ** 2 * torch.exp(-logvar2)", "+ (mean1 - mean2) ** 2 * torch.exp(-0.5 * logvar2)",
           "Gaussian KL: squared mean difference over sigma instead of sigma^2", ("tests/test_likelihood.py",),
           ("03_variational_bound",)),
    Mutant("decoder-bin-width", "ddpm_ref/likelihood.py",
           "inv_stdv = torch.exp(-log_scales)", "inv_stdv = torch.exp(-2 * log_scales)",
           "decoder CDF with 1/sigma^2 instead of 1/sigma", ("tests/test_likelihood.py",),
           ("05_decoder_bits_per_dim",)),
    Mutant("linear-schedule-endpoints", "ddpm_ref/schedules.py",
           "betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)",
           "betas = np.linspace(beta_start, beta_end, T + 1, dtype=np.float64)[1:]",
           "linear betas shifted by one grid step", ("tests/test_schedules.py", "tests/test_oracle_diffusers.py"),
           ("01_forward_process",)),
    Mutant("cosine-offset-dropped", "ddpm_ref/schedules.py",
           "f0 = math.cos(s / (1.0 + s) * math.pi / 2.0) ** 2",
           "f0 = 1.0",
           "cosine schedule not normalised by its t = 0 value", ("tests/test_schedules.py",),
           ("01_forward_process",)),
    Mutant("mse-target-xstart", "ddpm_ref/diffusion.py",
           """        if self.model_mean_type == "eps":
            target = noise""",
           """        if self.model_mean_type == "eps":
            target = x_start""",
           "L_simple regresses the network onto x_0 instead of eps", ("tests/test_diffusion.py", "tests/test_train.py"),
           ("06_training_and_sampling", "10_six_steps")),
    Mutant("trailing-without-minus-one", "ddpm_ref/sampling.py",
           "return (_round_half_even(T * np.arange(1, k + 1, dtype=np.int64), k) - 1).tolist(), T / k",
           "return (_round_half_even(T * np.arange(0, k, dtype=np.int64), k)).tolist(), T / k",
           "trailing spacing pinned at 0 instead of T - 1", ("tests/test_spacing.py",),
           ("07_sampling_choices",)),
    Mutant("ddim-sigma-beta", "ddpm_ref/sampling.py",
           "    return eta * np.sqrt(diffusion.posterior_variance)",
           "    return eta * np.sqrt(diffusion.betas)",
           "DDIM sigma(eta) built on beta_t instead of beta~_t", ("tests/test_sampling.py",),
           ("07_sampling_choices",)),
    Mutant("ddim-direction-coefficient", "ddpm_ref/sampling.py",
           "    return sig, np.append(0.0, np.sqrt(np.clip(room, 0.0, None)))",
           "    return sig, np.append(0.0, np.clip(room, 0.0, None))",
           "DDIM direction coefficient without its square root", ("tests/test_sampling.py",),
           ("07_sampling_choices", "11_continuous_time")),
)


def _copy_repo(dst: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "_build", ".pytest_cache", ".ruff_cache", "runs",
                                    "__pycache__", "*.egg-info", "node_modules", ".venv-*")
    shutil.copytree(ROOT, dst, ignore=ignore, symlinks=True)


def _apply(m: Mutant, root: Path) -> None:
    path = root / m.file
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        raise SystemExit(f"mutant {m.name}: its snippet occurs {n} times in {m.file} (must be once): update the list")
    path.write_text(text.replace(m.old, m.new))


def _run_tests(m: Mutant, root: Path, env: dict) -> str | None:
    """First failing unit test (node id), or None if all pass."""
    first = [t for t in m.tests if (root / t).exists()]
    for targets in (first, ["tests"]):
        if not targets:
            continue
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *targets]
        r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        if r.returncode not in (0, 5):
            hit = re.search(r"^(?:FAILED|ERROR) (\S+)", r.stdout, re.M)
            return hit.group(1) if hit else f"pytest exit {r.returncode}"
    return None


def _run_notebook(stem: str, root: Path) -> str | None:
    """The first cell that raises when the chapter runs (``cell N: AssertionError``), or None."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = root / "notebooks" / f"{stem}.ipynb"
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError:
        pass
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "raises-exception" in cell.metadata.get("tags", []):
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{stem} cell {i}: {out.get('ename')}"
    return None


def run(mutants, *, notebooks: bool = True, keep: bool = False) -> list[dict]:
    results = []
    base = Path(tempfile.mkdtemp(prefix="ddpm-mutants-"))
    try:
        for m in mutants:
            t0 = time.time()
            root = base / m.name
            _copy_repo(root)
            _apply(m, root)
            env = dict(os.environ, PYTHONPATH=str(root), HF_HUB_OFFLINE="1")
            os.environ["PYTHONPATH"] = str(root)  # the notebook kernels inherit it
            unit = _run_tests(m, root, env)
            chapter = None
            if notebooks:
                for stem in m.notebooks:
                    chapter = _run_notebook(stem, root)
                    if chapter:
                        break
            rec = {"name": m.name, "file": m.file, "what": m.what, "unit_test": unit, "chapter": chapter,
                   "caught": bool(unit) and (bool(chapter) or not notebooks), "seconds": round(time.time() - t0, 1)}
            results.append(rec)
            print(f"{m.name:32s} unit: {unit or 'NOT CAUGHT'} | chapter: {chapter or 'NOT CAUGHT'}", flush=True)
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        os.environ.pop("PYTHONPATH", None)
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    return results


def to_markdown(results) -> str:
    lines = ["| mutant | slip | first unit test that fails | first chapter cell that raises |",
             "| --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| `{r['name']}` (`{r['file']}`) | {r['what']} | {r['unit_test'] or '**not caught**'} | "
                     f"{r['chapter'] or '**not caught**'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="comma-separated mutant names")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--no-notebooks", action="store_true", help="unit tests only")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--markdown", default=None, help="write the results as a Markdown table here")
    p.add_argument("--keep", action="store_true", help="keep the scratch copies")
    args = p.parse_args(argv)
    mutants = MUTANTS
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {m.name for m in MUTANTS}
        if unknown:
            p.error(f"unknown mutants: {', '.join(sorted(unknown))}")
        mutants = tuple(m for m in MUTANTS if m.name in names)
    if args.list:
        for m in mutants:
            print(f"{m.name:32s} {m.file:28s} {m.what}")
        return 0
    for m in mutants:  # fail early on a stale snippet
        n = (ROOT / m.file).read_text().count(m.old)
        if n != 1:
            p.error(f"mutant {m.name}: its snippet occurs {n} times in {m.file} (must be once)")
    results = run(mutants, notebooks=not args.no_notebooks, keep=args.keep)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text("# Mutation check\n\nMade by `tools/mutants.py`.\n\n" + to_markdown(results))
    missed = [r["name"] for r in results if not r["caught"]]
    print(f"{len(results) - len(missed)} of {len(results)} mutants caught by a unit test and a chapter"
          + (f"; missed: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
