"""Tests of the book's own machinery: the notebook-output checker, the nbval sanitize rules,
the book configuration, and the headless-Chromium check of every built page.

The browser tests need Debian's /usr/bin/chromium and, for the built-book part, a book in
_build/html (``make book`` or ``make book-stored``). ``make test`` builds the book first and
sets ``DDPM_BOOK_CHECK=1``: then a missing browser or a missing page FAILS. Without that
variable (an ad hoc ``pytest tests``) those tests are skipped when the browser or the build
is absent.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
BOOK_CHECK = os.environ.get("DDPM_BOOK_CHECK") == "1"
HTML_DIR = Path(os.environ.get("DDPM_BOOK_HTML", REPO / "_build" / "html"))
# The toc whose pages are checked (another one only to try the check on a trial book).
BOOK_TOC = Path(os.environ.get("DDPM_BOOK_TOC", REPO / "_toc.yml"))


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"ddpm_book_tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


check_notebooks = _load_tool("check_notebooks")
check_book_html = _load_tool("check_book_html")
book_config = _load_tool("book_config")
format_notebook_code = _load_tool("format_notebook_code")


# --------------------------------------------------------------------------------------------
# tools/check_notebooks.py on fabricated notebooks
# --------------------------------------------------------------------------------------------
def _notebook(cells, kernel="python3"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter\n\nSome $x_t$.")] + cells
    return nb


def _code(source, count=None, outputs=(), tags=()):
    cell = nbformat.v4.new_code_cell(source, execution_count=count, outputs=list(outputs))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def _stdout(text):
    return nbformat.v4.new_output("stream", name="stdout", text=text)


def _write(nb, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_unexecuted_notebook_fails(tmp_path):
    nb = _notebook([_code("x = 1"), _code("print(x)")])
    problems = check_notebooks.check_notebook(_write(nb, tmp_path / "01_a.ipynb"))
    assert len(problems) == 2
    assert all("never executed" in p for p in problems)


def test_executed_notebook_passes(tmp_path):
    nb = _notebook([_code("x = 1", 1), _code("print(x)", 2, [_stdout("1\n")]), _code("  \n")])
    assert check_notebooks.check_notebook(_write(nb, tmp_path / "01_a.ipynb")) == []


def test_notebook_executed_by_a_real_kernel_passes(tmp_path):
    """The documented workflow (execute top to bottom, save outputs) satisfies the checker."""
    nbclient = pytest.importorskip("nbclient")
    nb = _notebook([_code("import math\nx = math.sqrt(2.0)"), _code("print(f'{x:.6f}')"),
                    _code("")])
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    path = _write(nb, tmp_path / "01_a.ipynb")
    assert check_notebooks.check_notebook(path) == []
    assert nb.cells[2].outputs[0]["text"] == "1.414214\n"


def test_partly_executed_notebook_fails(tmp_path):
    nb = _notebook([_code("x = 1", 1), _code("print(x)")])
    problems = check_notebooks.check_notebook(_write(nb, tmp_path / "01_a.ipynb"))
    assert len(problems) == 1 and "code cell 2 was never executed" in problems[0]


def test_out_of_order_execution_fails(tmp_path):
    nb = _notebook([_code("x = 1", 3), _code("print(x)", 4, [_stdout("1\n")])])
    problems = check_notebooks.check_notebook(_write(nb, tmp_path / "01_a.ipynb"))
    assert len(problems) == 1 and "execution_count 3, expected 1" in problems[0]


def test_stored_error_fails_unless_tagged(tmp_path):
    err = nbformat.v4.new_output("error", ename="ValueError", evalue="t outside [0, T)",
                                 traceback=[])
    bad = _notebook([_code("f(-1)", 1, [err])])
    problems = check_notebooks.check_notebook(_write(bad, tmp_path / "01_a.ipynb"))
    assert len(problems) == 1 and "ValueError: t outside [0, T)" in problems[0]
    ok = _notebook([_code("f(-1)", 1, [err], tags=["raises-exception"])])
    assert check_notebooks.check_notebook(_write(ok, tmp_path / "01_b.ipynb")) == []


def test_wrong_kernel_and_garbage_fail(tmp_path):
    nb = _notebook([_code("x = 1", 1)], kernel="conda-env-foo")
    problems = check_notebooks.check_notebook(_write(nb, tmp_path / "01_a.ipynb"))
    assert len(problems) == 1 and "kernelspec.name" in problems[0]
    junk = tmp_path / "02_b.ipynb"
    junk.write_text("{not json")
    assert "cannot be read" in check_notebooks.check_notebook(junk)[0]


def test_toc_missing_files_and_unlisted_notebooks(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")
    nbdir = tmp_path / "notebooks"
    _write(_notebook([]), nbdir / "01_listed.ipynb")
    _write(_notebook([]), nbdir / "02_unlisted.ipynb")
    toc = tmp_path / "_toc.yml"
    toc.write_text(
        "format: jb-book\nroot: book/intro\nparts:\n  - caption: P\n    chapters:\n"
        "      - file: notebooks/01_listed\n      - file: notebooks/03_missing\n"
    )
    problems = check_notebooks.check_toc(toc, nbdir)
    assert len(problems) == 2
    assert any("'notebooks/03_missing' has no file" in p for p in problems)
    assert any("02_unlisted.ipynb: not listed" in p for p in problems)


def test_check_notebooks_cli_exit_status(tmp_path, capsys):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")
    nbdir = tmp_path / "notebooks"
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/01_a\n")
    _write(_notebook([_code("x = 1", 1)]), nbdir / "01_a.ipynb")
    assert check_notebooks.main(["--toc", str(toc), str(nbdir)]) == 0
    _write(_notebook([_code("x = 1")]), nbdir / "01_a.ipynb")
    assert check_notebooks.main(["--toc", str(toc), str(nbdir)]) == 1
    assert "never executed" in capsys.readouterr().out


def test_committed_toc_keeps_every_chapter():
    """The chapter list is fixed by the plan of the book; entries must not be dropped."""
    files = check_notebooks.toc_files(REPO / "_toc.yml")
    assert files[0] == "book/intro"
    for page in ("book/notation", "book/reading_guide", "book/references", "book/glossary",
                 "book/reading_the_paper"):
        assert page in files
    chapters = [f for f in files if f.startswith("notebooks/")]
    assert len(chapters) == 14 and len(set(files)) == len(files)
    assert all(re.fullmatch(r"notebooks/\d\d_[a-z0-9_]+", f) for f in chapters)



def test_toc_chapter_numbers_match_notebook_prefixes():
    """With continuous numbering across numbered parts, notebook NN_topic is shown as chapter NN."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf8"))
    number = 0
    seen = 0
    for part in toc["parts"]:
        for chapter in part["chapters"]:
            if part.get("numbered"):
                number += 1
            m = re.fullmatch(r"notebooks/(\d\d)_\w+", chapter["file"])
            if m:
                seen += 1
                assert part.get("numbered"), chapter["file"]
                assert int(m.group(1)) == number, f"{chapter['file']} is shown as chapter {number}"
    assert seen == 14

# --------------------------------------------------------------------------------------------
# book/notation.md agrees with the code, README and CI entry point say what they must
# --------------------------------------------------------------------------------------------
def _paper_coefficients(betas):
    """The notation page's table, computed independently with the paper's 1-based t.

    Returns {attribute: array over code index c}, entry c being the paper's timestep c + 1.
    """
    import numpy as np

    T = len(betas)
    beta = {t: float(betas[t - 1]) for t in range(1, T + 1)}  # beta[t], t = 1..T
    alpha = {t: 1.0 - beta[t] for t in beta}
    abar = {0: 1.0}
    for t in range(1, T + 1):
        abar[t] = abar[t - 1] * alpha[t]
    btil = {t: (1 - abar[t - 1]) / (1 - abar[t]) * beta[t] for t in beta}
    rows = {
        "betas": lambda t: beta[t],
        "alphas": lambda t: alpha[t],
        "alphas_cumprod": lambda t: abar[t],
        "alphas_cumprod_prev": lambda t: abar[t - 1],
        "alphas_cumprod_next": lambda t: abar[t + 1] if t < T else 0.0,
        "one_minus_alphas_cumprod": lambda t: 1 - abar[t],
        "sqrt_alphas_cumprod": lambda t: abar[t] ** 0.5,
        "sqrt_one_minus_alphas_cumprod": lambda t: (1 - abar[t]) ** 0.5,
        "log_one_minus_alphas_cumprod": lambda t: np.log(1 - abar[t]),
        "sqrt_recip_alphas_cumprod": lambda t: abar[t] ** -0.5,
        "sqrt_recipm1_alphas_cumprod": lambda t: (1 / abar[t] - 1) ** 0.5,
        "posterior_variance": lambda t: btil[t],
        "posterior_log_variance_clipped": lambda t: np.log(btil[t] if t > 1 else btil[2]),
        "posterior_mean_coef1": lambda t: abar[t - 1] ** 0.5 * beta[t] / (1 - abar[t]),
        "posterior_mean_coef2": lambda t: alpha[t] ** 0.5 * (1 - abar[t - 1]) / (1 - abar[t]),
        "fixedlarge_variance": lambda t: beta[t] if t > 1 else btil[2],
        "fixedlarge_log_variance": lambda t: np.log(beta[t] if t > 1 else btil[2]),
    }
    return {name: np.array([f(c + 1) for c in range(T)]) for name, f in rows.items()}


def test_notation_table_matches_gaussian_diffusion():
    """Every attribute in book/notation.md exists, is float64 [T], and equals its stated formula
    (code index t = paper timestep t + 1); every coefficient of the class is in the table."""
    import numpy as np

    diffusion = pytest.importorskip("ddpm_ref.diffusion")
    text = (REPO / "book" / "notation.md").read_text(encoding="utf8")
    table = re.findall(r"^\| `([a-z_0-9]+)` \|", text, flags=re.M)
    assert len(table) >= 14
    betas = np.linspace(1e-4, 0.02, 50)  # the paper's linear schedule, shortened
    d = diffusion.GaussianDiffusion(betas)
    expected = _paper_coefficients(betas)
    assert set(table) == set(expected)  # the page documents exactly what is checked here
    assert set(getattr(d, "COEFFICIENT_NAMES", table)) <= set(table)
    for name in table:
        value = getattr(d, name)
        assert isinstance(value, np.ndarray) and value.dtype == np.float64, name
        assert value.shape == (50,), name
        np.testing.assert_allclose(value, expected[name], rtol=1e-12, atol=0, err_msg=name)
    assert d.alphas_cumprod_prev[0] == 1.0 and d.posterior_variance[0] == 0.0
    assert diffusion.paper_timestep(0) == 1 and diffusion.code_timestep(1) == 0


def test_readme_first_screen_and_ci_entry_point():
    readme = (REPO / "README.md").read_text(encoding="utf8")
    first_block = re.search(r"```bash\n(.*?)```", readme, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert [c for c in commands if c] == ["make book", "make test"]
    assert readme.index("make book") < 1200  # on the first screen
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert [line for line in ci if line and not line.startswith(("#", "set ", "cd "))] == [
        "make test"
    ]
    makefile = (REPO / "Makefile").read_text(encoding="utf8")
    for target in ("book:", "test:", "venv:", "chromium:", "nbval:", "unit:"):
        assert re.search(rf"^{target}", makefile, flags=re.M), target
    assert "DDPM_BOOK_CHECK=1" in makefile and "--nbval-sanitize-with nbval_sanitize.cfg" in makefile


# --------------------------------------------------------------------------------------------
# nbval_sanitize.cfg: machine noise is normalised, mathematics is not
# --------------------------------------------------------------------------------------------
def _sanitizer():
    from nbval.plugin import get_sanitize_patterns

    patterns = get_sanitize_patterns((REPO / "nbval_sanitize.cfg").read_text(encoding="utf8"))
    assert len(patterns) >= 8

    def sanitize(s: str) -> str:  # what nbval does with each output string
        for regex, replace in patterns:
            s = re.sub(regex, replace, s)
        return s

    return sanitize


MACHINE_NOISE = [
    ("<Figure size 700x350 with 1 Axes> at 0x7f3a2b1c0d90",
     "<Figure size 700x350 with 1 Axes> at 0x7fe012345678"),
    ("<function f at 0x7f00aa11>", "<function f at 0x55d0bb22>"),
    ("torch 2.13.0+cpu", "torch 2.13.0+cu128"),
    ("torch 2.13.0+cpu", "torch 2.13.0"),
    ("100%|##########| 1000/1000 [00:03<00:00, 289.45it/s]",
     "100%|##########| 1000/1000 [00:04<00:00, 231.20it/s]"),
    ("sampling:  50%|#####     | 5/10 [00:01<00:01,  3.21s/it]",
     "sampling:  50%|#####     | 5/10 [01:02<00:41,  1.10s/it]"),
    ("  0%|          | 0/10 [00:00<?, ?it/s]", "  0%|          | 0/10 [00:01<?, ?it/s]"),
    ("CPU times: user 1.2 s, sys: 30 ms, total: 1.23 s", "CPU times: user 2 s, sys: 1 ms, total: 2 s"),
    ("Wall time: 1.25 s", "Wall time: 980 ms"),
    ("sampled 16 images, took 12.3 s", "sampled 16 images, took 9.87 s"),
    ("elapsed: 2.5 min", "elapsed: 3.1 min"),
    ("throughput 123.4 img/s", "throughput 98 img/s"),
    ("/work/main/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning",
     "/tmp/ci/clone/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning"),
]

MATHEMATICS = [
    ("0.123456789", "0.123456788"),
    ("alphas_cumprod[999] = 4.0358e-05", "alphas_cumprod[999] = 4.0359e-05"),
    ("NLL <= 3.75 bits/dim", "NLL <= 3.70 bits/dim"),
    ("L_T = 1.1e-05 bits/dim", "L_T = 1.2e-05 bits/dim"),
    ("tensor([0.1000, 0.2000], dtype=torch.float64)", "tensor([0.1000, 0.2001], dtype=torch.float64)"),
    (r"$\displaystyle 2 s + 1$", r"$\displaystyle 3 s + 1$"),  # SymPy: a symbol named s
    (r"$\displaystyle \min\left(2 h, 1\right)$", r"$\displaystyle \min\left(3 h, 1\right)$"),
    ("T = 1000 steps", "T = 999 steps"),
    ("35746307 parameters", "35746306 parameters"),
    ("version 2.13.0", "version 2.14.0"),
    ("x at 0.5", "x at 0.6"),
    ("100%|##########| 1000/1000", "100%|##########| 999/999"),
]


@pytest.mark.parametrize("a, b", MACHINE_NOISE)
def test_sanitize_normalises_machine_noise(a, b):
    sanitize = _sanitizer()
    assert sanitize(a) == sanitize(b)


@pytest.mark.parametrize("a, b", MATHEMATICS)
def test_sanitize_keeps_mathematics(a, b):
    sanitize = _sanitizer()
    assert sanitize(a) != sanitize(b)
    assert sanitize(a) == a  # untouched, not merely still different


# --------------------------------------------------------------------------------------------
# _config.yml and tools/book_config.py
# --------------------------------------------------------------------------------------------
def _config() -> dict:
    return yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf8"))


def test_config_offline_math_proofs_and_execution():
    cfg = _config()
    extensions = cfg["sphinx"]["extra_extensions"]
    assert "sphinx-mathjax-offline" in extensions and "sphinx_proof" in extensions
    for name in extensions:  # the name Sphinx imports (this one is spelled with hyphens)
        importlib.import_module(name)
    for name, folder in cfg["sphinx"]["local_extensions"].items():
        assert (REPO / folder / f"{name}.py").is_file()
    # make book executes through Jupyter Book's cache, kept under _build (never committed)
    assert cfg["execute"]["execute_notebooks"] == "cache"
    assert Path(cfg["execute"]["cache"]).parts[0] == "_build"
    assert "_build/" in (REPO / ".gitignore").read_text().splitlines()
    assert cfg["execute"]["allow_errors"] is False
    assert cfg["only_build_toc_files"] is True
    assert (REPO / cfg["bibtex_bibfiles"][0]).is_file()


def test_config_has_no_dead_links_or_server_buttons():
    cfg = _config()
    assert "repository" not in cfg  # no placeholder repository URL anywhere in the pages
    html = cfg.get("html", {})
    for button in ("use_repository_button", "use_issues_button", "use_edit_page_button"):
        assert not html.get(button)
    launch = cfg.get("launch_buttons", {})
    assert not launch.get("thebe")
    assert not any(v for k, v in launch.items() if k.endswith("_url"))


def test_no_root_static_folder_with_scripts():
    """Jupyter Book adds every .js under a root _static/ as a script tag on every page."""
    static = REPO / "_static"
    assert not static.exists() or not list(static.rglob("*.js"))


def _load_ext(name: str):
    spec = importlib.util.spec_from_file_location(f"ddpm_book_ext_{name}", REPO / "book" / "_ext" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_app(fmt: str):
    from types import SimpleNamespace

    return SimpleNamespace(builder=SimpleNamespace(format=fmt), config=SimpleNamespace(math_number_all=False))


def test_pdf_chapter_numbers_go_into_the_assembled_tree():
    """The PDF's chapter-numbering switches are added to the LaTeX builder's assembled tree (one
    start_of_file per page) on every LaTeX build, not when a page is read: the pages may have
    been read by an HTML build (one environment for all builders), which adds nothing."""
    from docutils import nodes
    from sphinx import addnodes

    reader = _load_ext("book_reader")
    tree = nodes.document(None, None)
    for doc in ("book/notation", "book/reading_guide", "notebooks/01_forward_process", "notebooks/02_posterior",
                "book/glossary"):
        part = addnodes.start_of_file(docname=doc)
        part += nodes.section()
        tree += part
    reader._latex_chapter_numbers(_fake_app("html"), tree, "book/intro")
    assert not list(tree.findall(nodes.raw))
    reader._latex_chapter_numbers(_fake_app("latex"), tree, "book/intro")
    raw = {n.parent["docname"]: n.astext() for n in tree.findall(nodes.raw)}
    assert set(raw) == {"book/notation", "notebooks/01_forward_process", "book/glossary"}  # first of a part
    assert r"\setcounter{secnumdepth}{-1}" in raw["book/notation"] and "-1" not in raw["notebooks/01_forward_process"]
    assert all(isinstance(part.children[0], nodes.raw) for part in tree.findall(addnodes.start_of_file)
               if part["docname"] in raw)


def test_pdf_moves_tag_out_of_split():
    r"""A display equation with \tag{eq. 14} (ch05) stopped `make pdf`: Sphinx's LaTeX wraps it in
    split, where amsmath forbids \tag. For LaTeX the tag goes just before the outer \end."""
    from docutils import nodes

    fixes = _load_ext("ddpm_book_fixes")
    tex = r"L = \mathbb E\big[\|\epsilon - \epsilon_\theta\|^2\big] \tag{eq. 14}"
    out = fixes.latex_tag_outside(tex, None, False)
    assert out.startswith(r"\begin{equation*}") and out.endswith("\\end{split}\n\\tag{eq. 14}\\end{equation*}")
    assert out.count(r"\tag") == 1 and out.index(r"\tag") > out.index(r"\end{split}")
    labelled = fixes.latex_tag_outside(tex, "equation:notebooks/05_x:ch05-eq14", False)
    assert labelled.startswith(r"\begin{equation}\label{equation:notebooks/05_x:ch05-eq14}")
    assert labelled.endswith(r"\tag{eq. 14}\end{equation}")
    two_parts = fixes.latex_tag_outside("a = b\n\nc = d \\tag{7}", None, False)
    assert two_parts.endswith(r"\end{aligned}\tag{7}\end{align*}")
    assert fixes.latex_tag_outside("a = b", None, False) is None
    assert fixes.latex_tag_outside(r"a \tag{1} \\ b \tag{2}", None, False) is None  # left to LaTeX
    tree = nodes.document(None, None)
    tree += nodes.math_block(tex, tex, docname="notebooks/05_x", label=None, nowrap=False)
    tree += nodes.math_block("x = y", "x = y", docname="notebooks/05_x", label=None, nowrap=False)
    fixes._latex_tags(_fake_app("html"), tree, "index")  # MathJax shows \tag as it is
    assert [n.astext() for n in tree.findall(nodes.math_block)] == [tex, "x = y"]
    fixes._latex_tags(_fake_app("latex"), tree, "index")
    first, second = tree.findall(nodes.math_block)
    assert first["nowrap"] and first.astext() == out and not second["nowrap"] and second.astext() == "x = y"


def test_stored_outputs_config(tmp_path):
    out = tmp_path / "cfg.yml"
    assert book_config.main([str(REPO / "_config.yml"), str(out)]) == 0
    made = yaml.safe_load(out.read_text(encoding="utf8"))
    original = _config()
    assert made["execute"]["execute_notebooks"] == "off"
    for name, folder in made["sphinx"]["local_extensions"].items():
        assert Path(folder).is_absolute() and (Path(folder) / f"{name}.py").is_file()
    made["execute"]["execute_notebooks"] = original["execute"]["execute_notebooks"]
    made["sphinx"]["local_extensions"] = original["sphinx"]["local_extensions"]
    assert made == original  # nothing else differs


# --------------------------------------------------------------------------------------------
# The headless-browser check
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not os.access(check_book_html.CHROMIUM, os.X_OK):
        message = f"{check_book_html.CHROMIUM} is missing (apt-get install -y chromium)"
        if BOOK_CHECK:
            pytest.fail(message)
        pytest.skip(message)
    with check_book_html.Chromium() as b:
        yield b


def _mathjax_dir() -> Path:
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    return Path(spec.origin).parent / "static" / "mathjax"


def _page(tmp_path: Path, name: str, body: str, mathjax: bool = True) -> Path:
    head = ""
    if mathjax:
        link = tmp_path / "mathjax"
        if not link.exists():
            link.symlink_to(_mathjax_dir(), target_is_directory=True)
        # the same MathJax configuration the book uses
        head = ("<script>window.MathJax = {tex: {packages: {'[-]': ['noundefined']}}, options: "
                "{processHtmlClass: 'math', ignoreHtmlClass: 'document'}};</script>"
                '<script defer src="mathjax/tex-chtml.js"></script>')
    path = tmp_path / name
    path.write_text(f"<!DOCTYPE html><html lang=\"en\"><head><title>{name}</title>{head}</head>"
                    f'<body class="document">{body}</body></html>', encoding="utf8")
    return path


def _png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (8, 6), (200, 30, 30)).save(path)
    return path


def test_browser_check_passes_a_good_page(tmp_path, browser):
    _png(tmp_path / "ok.png")
    page = _page(tmp_path, "good.html",
                 r'<p>Inline <span class="math">\(\bar\alpha_t\)</span>.</p>'
                 r'<div class="math">\[q(x_t \mid x_0) = \mathcal{N}(x_t; \sqrt{\bar\alpha_t}'
                 r'\, x_0, (1 - \bar\alpha_t) I)\]</div>'
                 '<img src="ok.png" alt="ok"><pre>print(r"$\\beta_t$ \\(x\\)")</pre>'
                 '<a href="ok.png">figure</a>')
    report = browser.check_page(page)
    assert report.ok, report.problems
    assert report.n_math == 2 and report.n_typeset == 2 and report.n_images == 1


def test_browser_check_reports_raw_tex_and_broken_images(tmp_path, browser):
    page = _page(tmp_path, "bad.html",
                 r'<p>Raw \(x_t\) and $$y$$ in prose.</p>'
                 r'<span class="math">\(a\)</span><img src="missing.png" alt="gone">',
                 mathjax=False)
    problems = "\n".join(browser.check_page(page).problems)
    assert "MathJax is not loaded" in problems
    assert "math element(s) not typeset" in problems
    assert "raw TeX left in the rendered text" in problems and "Raw \\\\(x_t" in problems
    assert "image did not load: missing.png" in problems
    assert "resource failed to load" in problems


def test_browser_check_reports_tex_that_lost_its_delimiters(tmp_path, browser):
    """A cross-reference whose text Sphinx took from a heading with math (the TeX without
    delimiters) is reported; plain prose with underscores in code names is not."""
    page = _page(tmp_path, "bare.html",
                 '<p>See <a href="#x"><span class="std std-ref">L_\\mathrm{simple}: dropping the '
                 'weight</span></a> and <a href="#y">the posterior q(x_{t-1} | x_t, x_0)</a>; '
                 'the array alphas_cumprod_prev is fine.</p>')
    problems = "\n".join(browser.check_page(page).problems)
    assert problems.count("raw TeX left in the rendered text") == 2, problems
    assert "L_\\\\mathrm{simple}" in problems and "q(x_{t-1}" in problems


def test_browser_check_reports_tex_errors_dead_links_and_script_errors(tmp_path, browser):
    page = _page(tmp_path, "errors.html",
                 r'<span class="math">\(\notamacro x\)</span><a href="nowhere.html">x</a>'
                 "<script>const A = 1;</script><script>const A = 2;</script>")
    problems = "\n".join(browser.check_page(page).problems)
    assert "MathJax TeX error" in problems and "notamacro" in problems
    assert "link to a missing file" in problems and "nowhere.html" in problems
    assert "uncaught script exception" in problems
    missing = browser.check_page(tmp_path / "never_built.html")
    assert missing.problems == ["page was not built (file missing)"]


def test_browser_check_measures_widths_and_the_switch(tmp_path, browser):
    """A display equation, a code line and an output wider than the column are each reported
    at 1280 px with kind and snippet; they are problems only where the width rules are enforced;
    at 390 px a block that runs off the screen outside any scrolling box is reported too."""
    wide = "x_{1} + " * 90 + "x_{91}"
    body = (f'<article class="bd-article" style="width: 600px">'
            f'<div class="math notranslate nohighlight">\\[{wide}\\]</div>'
            '<div class="highlight"><pre tabindex="0" style="overflow-x: auto">'
            + "long_name = 1  # " + "y" * 150 + "</pre></div>"
            '<div class="cell_output"><div class="output stream"><pre style="white-space: pre">'
            + "z" * 200 + "</pre></div></div>"
            '<div class="highlight"><pre tabindex="0" style="overflow-x: auto">short = 1</pre></div>'
            '<p><span class="math notranslate nohighlight">\\(a\\)</span> fits.</p></article>')
    page = _page(tmp_path, "wide.html", body)
    report = browser.check_page(page, enforce_width=False)
    assert report.ok, report.problems  # listed, not enforced
    kinds = sorted({(o.viewport, o.kind) for o in report.width})
    assert ("1280x800", "equation") in kinds and ("1280x800", "code") in kinds
    assert ("1280x800", "output") in kinds
    code = [o for o in report.width if o.kind == "code" and o.viewport == "1280x800"]
    assert len(code) == 1 and "longest 167 chars" in code[0].snippet  # the short block fits
    eq = [o for o in report.width if o.kind == "equation"][0]
    assert "x_{1} + x_{1}" in eq.snippet  # the TeX source names the equation
    assert any(o.viewport == "390px" for o in report.width)  # the unboxed output runs off a phone
    enforced = browser.check_page(page, enforce_width=True)
    assert sum("does not fit" in p for p in enforced.problems) == len(enforced.width) >= 4


def test_browser_check_accepts_blocks_that_fit(tmp_path, browser):
    body = ('<article class="bd-article" style="width: 900px">'
            r'<div class="math notranslate nohighlight">\[q(x_t \mid x_0) = \mathcal{N}(x_t; 0, I)\]</div>'
            '<div class="highlight"><pre tabindex="0" style="overflow-x: auto">x = 1</pre></div>'
            '<div class="cell_output"><div class="output stream"><pre>ok</pre></div></div></article>')
    report = browser.check_page(_page(tmp_path, "fits.html", body), enforce_width=True)
    assert report.ok and report.width == [], report.problems


# The theme's rules for a numbered display equation (pydata-sphinx-theme 0.16): the math div is a
# row-reversed flexbox with the number first, the mjx-container grows into the rest and scrolls.
THEME_MATH_CSS = ("<style>div.math { display: flex; flex-direction: row-reverse; gap: .5em; "
                  "align-items: center; max-width: 100%; overflow: hidden; } "
                  "div.math mjx-container { flex-grow: 1; overflow: auto; } "
                  "span.eqno { display: inline-block; width: 62px; }</style>")


def _book_css() -> str:
    return f'<link rel="stylesheet" href="{(REPO / "book" / "_static" / "ddpm_book.css").as_uri()}">'


def test_browser_check_measures_a_numbered_equation_beside_its_number(tmp_path, browser):
    """A numbered equation's mjx-container sits beside the number, about 70 px narrower than the
    math div around both (ch05's eq. 13: 971 px of formula in a 906-px box, inside a 977-px div).
    The formula is measured against the box that scrolls, the mjx-container itself: an equation
    that fits the div but not the space beside its number is reported, the same formula without
    a number is not, and a shorter numbered one is not."""
    body = (THEME_MATH_CSS + _book_css() + '<article class="bd-article" style="width: 600px">'
            '<div class="math notranslate nohighlight" id="equation-wide"><span class="eqno">(5.1)</span>'
            r'\[a_{\mathrm{wide}} + \hspace{490px} b\]</div>'
            '<div class="math notranslate nohighlight" id="equation-short"><span class="eqno">(5.2)</span>'
            r'\[a_{\mathrm{short}} + \hspace{380px} b\]</div>'
            r'<div class="math notranslate nohighlight">\[a_{\mathrm{plain}} + \hspace{490px} b\]</div>'
            '</article>')
    report = browser.check_page(_page(tmp_path, "numbered.html", body), enforce_width=True)
    desktop = [o for o in report.width if o.viewport == "1280x800"]
    assert len(desktop) == 1, report.width
    assert desktop[0].kind == "equation" and r"a_{\mathrm{wide}}" in desktop[0].snippet
    need, have = map(int, re.search(r"content (\d+) px > box (\d+) px", desktop[0].why).groups())
    assert 530 < need < 590 and have < 600 - 62 and need > have  # fits the div, not beside its number
    assert any(r"a_{\mathrm{wide}}" in p and "does not fit" in p for p in report.problems)


def test_browser_check_measures_code_blocks_in_cell_outputs(tmp_path, browser):
    """A cell's Markdown output may show code blocks (chapter 9 prints the shell commands to run)
    and tables: they are measured like any code block or table (kind "output"), once each."""
    command = "python -m ddpm_ref train --config cifar10 --data cifar10:data/cifar10 " + "--flag value " * 10
    cells = "".join(f"<td style='white-space: nowrap'>column number {i} of the table</td>" for i in range(8))
    body = ('<article class="bd-article" style="width: 600px">'
            '<div class="cell_output docutils container">'
            '<div class="output stream highlight-myst-ansi"><div class="highlight"><pre>printed: ok</pre></div></div>'
            '<p><strong>train, 1 GPU</strong></p>'
            '<div class="highlight-bash notranslate"><div class="highlight">'
            f'<pre style="overflow-x: auto">{command}</pre></div></div>'
            '<div class="highlight-bash notranslate"><div class="highlight">'
            '<pre style="overflow-x: auto">python -m ddpm_ref sample --help</pre></div></div>'
            '<div class="pst-scrollable-table-container" style="overflow-x: auto">'
            f'<table><tr>{cells}</tr></table></div>'
            '</div></article>')
    report = browser.check_page(_page(tmp_path, "outputs.html", body, mathjax=False), enforce_width=True)
    desktop = [o for o in report.width if o.viewport == "1280x800"]
    assert sorted(o.kind for o in desktop) == ["output", "output"], report.width
    assert any("python -m ddpm_ref train" in o.snippet and "1 lines" in o.snippet for o in desktop)
    assert any("column number 0" in o.snippet for o in desktop)
    assert not any("sample --help" in o.snippet or "printed: ok" in o.snippet for o in report.width)
    assert sum("does not fit" in p for p in report.problems) == len(report.width)


# A stand-in for Sphinx's search page: like searchtools.js it adds the results one at a time
# (here two at once, then a pause, then eight more 30 ms apart), each passage a moment after its
# result, and prints "Search finished, found N page(s) ..." only after the last one.
SLOW_SEARCH_PAGE = """<!DOCTYPE html><html lang="en"><head><title>search</title></head><body>
<div id="search-results"></div>
<script>
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
(async () => {
  const out = document.getElementById('search-results');
  out.appendChild(document.createElement('h2')).textContent = 'Searching';
  const status = out.appendChild(document.createElement('p'));
  status.classList.add('search-summary');
  const list = out.appendChild(document.createElement('ul'));
  list.classList.add('search');
  const total = %(total)d;
  for (let i = 0; i < total; i++) {
    const li = list.appendChild(document.createElement('li'));
    const a = li.appendChild(document.createElement('a'));
    a.href = `page${i}.html`; a.textContent = `Page ${i}`;
    Promise.resolve().then(() => {
      const p = li.appendChild(document.createElement('p'));
      p.className = 'context'; p.textContent = `... the posterior variance, page ${i} ...`;
    });
    await sleep(i === 1 ? 600 : 30);
  }
  if (%(finish)s) status.innerText = total
    ? `Search finished, found ${total} page(s) matching the search query.`
    : 'Your search did not match any documents.';
})();
</script></body></html>"""


def test_search_waits_until_sphinx_has_finished(tmp_path, browser):
    """The search helper reads the results only once the page says the search finished: Sphinx
    shows them one at a time, and a probe that stopped as soon as the results shown so far each
    had a passage returned 2 of 19 results in 2 of 5 runs."""
    page = tmp_path / "search.html"
    page.write_text(SLOW_SEARCH_PAGE % {"total": 10, "finish": "true"}, encoding="utf8")
    results = browser.search(page, "posterior variance")
    assert len(results) == 10, results  # the old probe returned the first 2
    assert results.found == 10
    assert all("posterior variance" in r["passage"] for r in results)
    assert results.summary.startswith("Search finished, found 10 page(s)")
    none = tmp_path / "nothing.html"
    none.write_text(SLOW_SEARCH_PAGE % {"total": 0, "finish": "true"}, encoding="utf8")
    assert browser.search(none, "zzz") == [] and browser.search(none, "zzz").found == 0
    stuck = tmp_path / "stuck.html"
    stuck.write_text(SLOW_SEARCH_PAGE % {"total": 3, "finish": "false"}, encoding="utf8")
    with pytest.raises(check_book_html.BrowserError, match="did not finish"):
        browser.search(stuck, "posterior variance", timeout=2)


def test_width_switch_patterns(monkeypatch):
    patterns = check_book_html.width_patterns
    assert patterns("all") == ["*"] and patterns("none") == [] and patterns("book/*, notebooks/02_*") == [
        "book/*", "notebooks/02_*"]
    monkeypatch.setenv("DDPM_BOOK_ENFORCE_WIDTH", "notebooks/0[1-3]_*")
    assert patterns() == ["notebooks/0[1-3]_*"]
    monkeypatch.delenv("DDPM_BOOK_ENFORCE_WIDTH")
    assert patterns() == patterns(check_book_html.DEFAULT_ENFORCE_WIDTH)
    # by default the width rules hold on every page of the book
    default = patterns(check_book_html.DEFAULT_ENFORCE_WIDTH)
    assert all(check_book_html.width_enforced(page, default) for page in check_book_html.toc_pages(REPO / "_toc.yml"))
    enforced = check_book_html.width_enforced
    assert enforced("book/notation", patterns("book/*,index")) and not enforced("notebooks/02_posterior",
                                                                                 patterns("book/*"))
    assert enforced("notebooks/02_posterior", patterns("all"))
    assert check_book_html.page_name(HTML_DIR / "notebooks" / "02_x.html", HTML_DIR) == "notebooks/02_x"


def test_browser_check_dark_mode_figures(tmp_path, browser):
    """A figure with a transparent background is illegible on the dark theme's page unless it
    sits on a light opaque backdrop; an opaque figure is fine."""
    from PIL import Image

    clear = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    clear.paste((0, 0, 0, 255), (0, 14, 40, 16))  # a black line on nothing
    clear.save(tmp_path / "clear.png")
    _png(tmp_path / "solid.png")
    dark = '<style>html[data-theme="dark"] body { background: #121212; }</style>'
    page = _page(tmp_path, "dark.html", dark + '<img src="clear.png" alt="a line"><img src="solid.png" alt="red">')
    problems = browser.check_page(page).problems
    assert len([p for p in problems if p.startswith("dark mode")]) == 1, problems
    assert "clear.png" in problems[0] and "transparent" in problems[0]
    carded = _page(tmp_path, "carded.html", dark + '<style>img { background: #fff; }</style>'
                   '<img src="clear.png" alt="a line">')
    assert browser.check_page(carded).ok


def test_browser_check_runs_axe(tmp_path, browser):
    """axe-core runs in the page: an image without alt text and a button without a name are
    serious/critical violations; the image is also listed for the notebooks' final pass."""
    if not check_book_html.AXE_JS.is_file():
        pytest.fail("axe-core is not installed: run `npm ci` (make test does)")
    _png(tmp_path / "ok.png")
    page = _page(tmp_path, "a11y.html", '<main><img src="ok.png"><button></button><p>text</p></main>')
    report = browser.check_page(page)
    text = "\n".join(report.problems)
    assert "accessibility (light, critical): image-alt" in text
    assert "button-name" in text
    assert report.missing_alt and "ok.png" in report.missing_alt[0]
    fine = _page(tmp_path, "fine.html", '<main><img src="ok.png" alt="a red square"><p>text</p></main>')
    assert browser.check_page(fine).ok
    # docutils' fallback alt (the file's path) says nothing about the figure
    named = _page(tmp_path, "named.html", '<main><img src="ok.png" alt="../_images/ok.png"><p>t</p></main>')
    assert "alt text is its file name" in "\n".join(browser.check_page(named).problems)
    # the audit's contrast check sees the dark theme's colours
    low = _page(tmp_path, "low.html", '<style>html[data-theme="dark"] p { color: #333; background: #222; }</style>'
                '<main><p>dark grey on black</p></main>')
    assert "accessibility (dark, serious): color-contrast" in "\n".join(browser.check_page(low).problems)


def test_package_lock_pins_axe():
    """make test installs axe-core with `npm ci` from the lock file: one exact version."""
    import json

    pkg = json.loads((REPO / "package.json").read_text())
    lock = json.loads((REPO / "package-lock.json").read_text())
    version = pkg["devDependencies"]["axe-core"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert lock["packages"]["node_modules/axe-core"]["version"] == version
    assert lock["packages"]["node_modules/axe-core"]["integrity"].startswith("sha512-")
    assert "node_modules/" in (REPO / ".gitignore").read_text().splitlines()
    assert "npm ci" in (REPO / "Makefile").read_text()


TOC_PAGES = check_book_html.toc_pages(BOOK_TOC)
CHECKED_PAGES = [*TOC_PAGES, "search"]  # the search page has the book's frame too
ENFORCE_WIDTH = check_book_html.width_patterns()


@pytest.fixture(scope="module")
def book_reports(browser):
    if not HTML_DIR.is_dir():
        message = f"the book is not built ({HTML_DIR} missing): run `make book`"
        if BOOK_CHECK:
            pytest.fail(message)
        pytest.skip(message)
    return {page: browser.check_page(HTML_DIR / f"{page}.html",
                                     enforce_width=check_book_html.width_enforced(page, ENFORCE_WIDTH))
            for page in CHECKED_PAGES}


@pytest.mark.parametrize("page", CHECKED_PAGES)
def test_built_page_renders(page, book_reports):
    """Math typeset, no raw TeX, every image and local link present, no script error, one
    search box, legible figures in dark mode, no serious/critical axe-core violation, and (on
    the pages DDPM_BOOK_ENFORCE_WIDTH names) every block fits at 1280 px and nothing is clipped
    at 390 px."""
    report = book_reports[page]
    assert report.ok, "\n".join(report.problems)


def test_landing_page_figure(book_reports):
    """The landing page shows the forward and reverse chains, drawn at build time, with alt text."""
    html = (HTML_DIR / "book" / "intro.html").read_text(encoding="utf8")
    m = re.search(r'<figure[^>]*ddpm-landing[^>]*>\s*(<img[^>]*>)', html, flags=re.S)
    assert m, "no landing figure on book/intro"
    src = re.search(r'src="([^"]+)"', m.group(1)).group(1)
    alt = re.search(r'alt="([^"]+)"', m.group(1)).group(1)
    assert (HTML_DIR / "book" / src).resolve().is_file()
    assert "CIFAR-10" in alt and "noise" in alt
    assert book_reports["book/intro"].n_images >= 1
    assert not list((REPO / "book").rglob("landing_chains*.png"))  # nothing binary committed


def test_chapters_say_run_time_and_needs(book_reports):
    """Each chapter's first block under its title says how long it runs and what it needs."""
    for page in TOC_PAGES:
        if not page.startswith("notebooks/"):
            continue
        html = (HTML_DIR / f"{page}.html").read_text(encoding="utf8")
        m = re.search(r"</h1>\s*<div class=\"ddpm-runinfo[^\"]*\">(.*?)</div>", html, flags=re.S)
        assert m, f"{page}: no run-time box right under the title"
        text = re.sub(r"<[^>]+>", "", m.group(1))
        assert "Running this chapter" in text and "Needs:" in text and "execution report" in text
        assert re.search(r"about \d+(\.\d)? (s|min)|not measured", text), text


def test_execution_report_lists_every_chapter(book_reports):
    html = (HTML_DIR / "book" / "execution_report.html").read_text(encoding="utf8")
    table = re.search(r'<table[^>]*ddpm-exec-report.*?</table>', html, flags=re.S).group(0)
    chapters = [p for p in TOC_PAGES if p.startswith("notebooks/")]
    assert table.count("<tr") == len(chapters) + 1  # + the header row
    for page in chapters:
        assert f"{Path(page).name}.html" in table


def test_search_shows_passages_offline(browser, book_reports):
    """The search page (opened from disk) lists matching pages WITH the matching passage."""
    results = browser.search(HTML_DIR / "search.html", "posterior variance")
    assert results.summary.startswith("Search finished") and len(results) == results.found >= 3
    with_passage = [r for r in results if "posterior" in r["passage"].lower()]
    assert len(with_passage) >= 3, results[:3]
    assert any(r["href"].startswith("notebooks/02_posterior") for r in results)


def test_built_book_has_typeset_math_and_images(book_reports):
    """The page checks above are not vacuous: the book shows typeset math and figures."""
    assert book_reports["book/notation"].n_typeset > 20
    assert sum(r.n_typeset for r in book_reports.values()) > 100
    assert sum(r.n_images for r in book_reports.values()) > 0


def test_notebook_pages_offer_their_ipynb(book_reports):
    """Each chapter page links its downloadable .ipynb (served from _sources, offline)."""
    for page in TOC_PAGES:
        if not page.startswith("notebooks/"):
            continue
        html = (HTML_DIR / f"{page}.html").read_text(encoding="utf8")
        name = Path(page).name
        assert f'_sources/{page}.ipynb"' in html, f"{page}: no download link to {name}.ipynb"
        assert (HTML_DIR / "_sources" / f"{page}.ipynb").is_file()


def test_no_placeholder_or_server_links(book_reports):
    bad = re.compile(r'href="[^"]*(executablebooks/jupyter-book|mybinder|colab\.research|'
                     r'github\.com/your|example\.com)', re.I)
    for page in TOC_PAGES:
        html = (HTML_DIR / f"{page}.html").read_text(encoding="utf8")
        assert not bad.search(html), f"{page}: {bad.search(html).group(0)}"


def test_check_book_html_cli(tmp_path, browser, capsys):
    _png(tmp_path / "ok.png")
    good = _page(tmp_path, "good.html", '<main><img src="ok.png" alt="a red square"></main>', mathjax=False)
    bad = _page(tmp_path, "bad.html", '<img src="nope.png">', mathjax=False)
    assert check_book_html.main([str(good)]) == 0
    assert check_book_html.main([str(good), str(bad)]) == 1
    assert "image did not load: nope.png" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "mathjax", ignore_errors=True)


# --------------------------------------------------------------------------------------------
# tools/format_notebook_code.py (for the notebooks' final width pass)
# --------------------------------------------------------------------------------------------
def test_format_notebook_code_keeps_outputs(tmp_path):
    long_call = ("result = some_function(argument_number_one, argument_number_two, argument_number_three, "
                 "argument_number_four, argument_number_five)")
    out = _stdout("a long output line that stays exactly as it is " * 4 + "\n")
    nb = _notebook([_code("x = 1", 1), _code(long_call, 2, [out], tags=["check-numerical"])])
    nb.cells[2].metadata["mystnb"] = {"figure": {"caption": "c", "name": "fig-x"}}
    path = _write(nb, tmp_path / "01_a.ipynb")
    before = json.loads(path.read_text())
    assert format_notebook_code.main(["--check", "--width", "80", str(path)]) == 1
    assert json.loads(path.read_text()) == before  # --check writes nothing
    assert format_notebook_code.main(["--width", "80", str(path)]) == 0
    after = json.loads(path.read_text())
    assert path.read_text().endswith("}\n") and '\n "cells": [' in path.read_text()  # indent=1
    for a, b in zip(before["cells"], after["cells"], strict=True):
        for key in ("outputs", "execution_count", "metadata", "id", "cell_type"):
            assert a.get(key) == b.get(key), key
    assert after["cells"][1]["source"] == before["cells"][1]["source"]  # a short cell is untouched
    new_src = "".join(after["cells"][2]["source"])
    assert max(len(line) for line in new_src.splitlines()) <= 80
    assert new_src.replace(" ", "").replace("\n", "").rstrip(",)") == long_call.replace(" ", "").rstrip(")")
    assert format_notebook_code.main(["--check", "--width", "80", str(path)]) == 0
    assert format_notebook_code.main(["--width", "80", str(tmp_path / "missing.txt")]) == 2


# --------------------------------------------------------------------------------------------
# make pdf (slow: TeX Live, about two minutes)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_make_pdf_builds_the_whole_book():
    """`make pdf` gives one PDF of the whole book: every chapter, numbered equations and
    figures, and no unresolved reference (LaTeX prints those as "??").

    Jupyter Book keeps one Sphinx environment (_build/.doctrees) for all its builders, and the
    PDF used to come out right only when the last build before it was a PDF build: after an HTML
    build it reused the pages as read for HTML (chapters numbered from 3). So an HTML-family
    build runs first here (dirhtml: it leaves _build/html alone), the order that failed."""
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    config = REPO / "_build" / "_config.stored-outputs.yml"
    assert book_config.main([str(REPO / "_config.yml"), str(config)]) == 0
    html_first = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", ".", "--builder",
                                 "dirhtml", "--all", "--config", str(config)], cwd=REPO, capture_output=True, text=True)
    assert html_first.returncode == 0, html_first.stdout[-3000:] + html_first.stderr[-3000:]
    shutil.rmtree(REPO / "_build" / "dirhtml", ignore_errors=True)  # only its reading mattered
    run = subprocess.run(["make", "pdf"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    pdf = REPO / "_build" / "latex" / "book.pdf"
    log = (REPO / "_build" / "latex" / "book.log").read_text(encoding="utf8", errors="replace")
    pages = int(re.search(r"Output written on book\.pdf \((\d+) pages", log).group(1))
    assert pages > 150
    assert "There were undefined references" not in log
    assert not re.search(r"Reference `[^']*' on page \d+ undefined", log)
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "??" not in text
    for title in ("The posterior", "Equation ledger", "Execution report", "References"):
        assert title in text, title
    # chapters, figures and equations numbered as in the HTML book (chapter 1 = the forward process)
    assert re.search(r"^\s*1 The forward process", text, flags=re.M)
    assert re.search(r"Fig\. 1\.1", text) and re.search(r"\(4\.1\)", text)
    assert "What the book is about" in text  # the landing figure's caption
