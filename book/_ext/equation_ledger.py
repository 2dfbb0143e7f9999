r"""Local Sphinx extension: the "Equation ledger" page, generated from the notebooks' cell tags.

The registry of rows is ``ddpm_ref.paper.LEDGER`` (every numbered equation of the paper,
Algorithms 1-4, the paper's main claims, and the later results the book derives). A notebook
cell joins a row through its tags: one kind tag (``derivation``, ``check-symbolic``,
``check-numerical``, ``check-independent``) and one or more row keys (``eq-4``, ``alg-2``, ...).

* :func:`scan` reads every notebook (plain JSON, no Sphinx needed) and returns the tagged cells
  and the problems found (unknown keys, a check cell that does not assert, ...);
  ``tests/test_ledger.py`` uses it.
* :func:`implementing_functions` names the ddpm_ref functions whose docstrings cite each row
  ("eq. 4", "eqs. 6-7", "Algorithm 2", or the row's own ``cites`` pattern).
* At build time, ``source-read`` gives each tagged cell a MyST target (``ledger-<nb>-<cell>``),
  and the ``{equation-ledger}`` directive renders the table with cross-references to them.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path

KINDS = ("derivation", "check-symbolic", "check-numerical", "check-independent")
KIND_TITLES = {"check-symbolic": "symbolic", "check-numerical": "numerical", "check-independent": "independent"}
KEY_PREFIXES = ("eq-", "alg-", "claim-", "ext-")
#: a citation preceded (within its sentence) by one of these names another paper's equation
OTHER_PAPERS = re.compile(r"(DDIM|Song|Kingma|VDM|Nichol|improved-diffusion|Sohl|Lin et al|SDE|Dhariwal)[^.;]*$")
_EQ_CITATION = re.compile(
    r"\b[Ee]q(?:s|uations?)?\.?\s*(\d+(?:\s*[–-]\s*\d+)?(?:\s*(?:,|and|&)\s*\d+(?:\s*[–-]\s*\d+)?)*)"
)
_ALG_CITATION = re.compile(r"\bAlgorithms?\s+(\d(?:\s*(?:,|and|&|[–-])\s*\d)*)")


@dataclass(frozen=True)
class LedgerCell:
    """A tagged notebook cell."""

    docname: str  #: e.g. "notebooks/03_variational_bound"
    index: int  #: position of the cell in the notebook (all cells, from 0)
    cell_type: str
    kind: str
    keys: tuple[str, ...]
    section: str  #: the heading the cell sits under (or opens)

    @property
    def label(self) -> str:
        return f"ledger-{Path(self.docname).name}-{self.index}"

    @property
    def chapter(self) -> str:
        stem = Path(self.docname).name
        return f"ch. {int(stem[:2])}" if stem[:2].isdigit() else stem


def _headings(source: str) -> list[str]:
    """Markdown headings of a cell, outside fenced blocks (``` ~~~ :::)."""
    out, fence = [], None
    for line in source.splitlines():
        s = line.strip()
        m = re.match(r"^(`{3,}|~{3,}|:{3,})", s)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark[0] * len(mark)
            elif s.startswith(fence) and s.strip(fence[0]) == "":
                fence = None
            continue
        if fence is None:
            h = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", s)
            if h:
                out.append(h.group(2))
    return out


def scan_notebook(path: Path, docname: str, registry) -> tuple[list[LedgerCell], list[str]]:
    """The tagged cells of one notebook and the problems with their tags."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    cells, problems = [], []
    section = ""
    for i, cell in enumerate(nb.get("cells", [])):
        src = "".join(cell.get("source", ""))
        heads = _headings(src) if cell.get("cell_type") == "markdown" else []
        here = heads[0] if heads else section  # a cell that opens a section belongs to it
        if heads:
            section = heads[-1]  # the cells after it sit under its last heading
        tags = list(cell.get("metadata", {}).get("tags", []))
        kinds = [t for t in tags if t in KINDS]
        keys = tuple(t for t in tags if t.startswith(KEY_PREFIXES))
        where = f"{docname} cell {i}"
        for k in keys:
            if k not in registry:
                problems.append(f"{where}: tag {k!r} is not a row of ddpm_ref.paper.LEDGER")
        if not kinds and not keys:
            continue
        if len(kinds) != 1:
            problems.append(f"{where}: needs exactly one kind tag of {KINDS}, has {kinds}")
            continue
        if not keys:
            problems.append(f"{where}: kind {kinds[0]!r} without a row key ({', '.join(KEY_PREFIXES)}...)")
            continue
        kind = kinds[0]
        if kind.startswith("check-"):
            if cell.get("cell_type") != "code":
                problems.append(f"{where}: a {kind} cell must be a code cell")
            elif not re.search(r"\bassert\b|\bassert_[a-z_]*\(|\.assert[A-Z_a-z]*\(", src):
                problems.append(f"{where}: a {kind} cell must assert")
        cells.append(LedgerCell(docname, i, cell.get("cell_type", ""), kind,
                                tuple(k for k in keys if k in registry), here))
    return cells, problems


def scan(root: Path, registry=None) -> tuple[list[LedgerCell], list[str]]:
    """Tagged cells and tag problems of every notebook under ``root/notebooks``."""
    if registry is None:
        from ddpm_ref.paper import LEDGER as registry
    cells, problems = [], []
    for path in sorted((Path(root) / "notebooks").glob("*.ipynb")):
        c, p = scan_notebook(path, f"notebooks/{path.stem}", registry)
        cells += c
        problems += p
    return cells, problems


def _expand(numbers: str) -> list[int]:
    out = []
    for part in re.split(r"\s*(?:,|and|&)\s*", numbers):
        m = re.match(r"(\d+)\s*[–-]\s*(\d+)$", part.strip())
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            out += list(range(a, b + 1)) if a <= b <= a + 30 else [a, b]
        elif part.strip().isdigit():
            out.append(int(part))
    return out


def cited_keys(doc: str, registry) -> set[str]:
    """Ledger keys a docstring cites: the paper's "eq. N" / "Algorithm N", or a row's own pattern."""
    keys = set()
    for rx, prefix in ((_EQ_CITATION, "eq-"), (_ALG_CITATION, "alg-")):
        for m in rx.finditer(doc):
            before = doc[max(0, m.start() - 60): m.start()].replace("et al.", "et al")
            if OTHER_PAPERS.search(before):
                continue
            keys.update(f"{prefix}{n}" for n in _expand(m.group(1)))
    for key, entry in registry.items():
        if entry.cites and re.search(entry.cites, doc):
            keys.add(key)
    return {k for k in keys if k in registry}


def implementing_functions(registry=None, package: str = "ddpm_ref") -> dict[str, list[str]]:
    """Row key -> the ddpm_ref functions, classes and methods whose docstrings cite it."""
    if registry is None:
        from ddpm_ref.paper import LEDGER as registry
    pkg = importlib.import_module(package)
    found: dict[str, set[str]] = {}
    names = [m.name for m in pkgutil.iter_modules(pkg.__path__, package + ".") if not m.name.endswith("__main__")]
    for modname in names:
        try:
            mod = importlib.import_module(modname)
        except Exception:  # an optional dependency missing: the module cannot implement a row here
            continue
        objs = []
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != modname:
                continue
            if inspect.isfunction(obj):
                objs.append((f"{modname}.{name}", obj))
            elif inspect.isclass(obj):
                objs.append((f"{modname}.{name}", obj))
                for mname, meth in vars(obj).items():
                    if not mname.startswith("_") and (inspect.isfunction(meth) or isinstance(meth, property)):
                        objs.append((f"{modname}.{name}.{mname}", meth))
        for qual, obj in objs:
            doc = inspect.getdoc(obj) or ""
            for key in cited_keys(doc, registry):
                found.setdefault(key, set()).add(qual)
    return {k: sorted(v) for k, v in found.items()}


# ---------------------------------------------------------------------------------------- Sphinx
def _add_targets(app, docname, source) -> None:
    """source-read: give every tagged cell of a notebook a MyST target ``(ledger-<nb>-<i>)=``."""
    if not docname.startswith("notebooks/"):
        return
    path = Path(app.srcdir) / f"{docname}.ipynb"
    if not path.exists():
        return
    try:
        nb = json.loads(source[0])
    except ValueError:
        return
    new_cells = []
    changed = False
    for i, cell in enumerate(nb.get("cells", [])):
        tags = cell.get("metadata", {}).get("tags", [])
        if any(t in KINDS for t in tags):
            label = f"ledger-{Path(docname).name}-{i}"
            if cell.get("cell_type") == "markdown":
                src = "".join(cell.get("source", ""))
                cell = dict(cell, source=f"({label})=\n{src}")
            else:
                new_cells.append({"cell_type": "markdown", "id": f"{label}-anchor", "metadata": {},
                                  "source": f"({label})=\n"})
            changed = True
        new_cells.append(cell)
    if changed:
        nb["cells"] = new_cells
        source[0] = json.dumps(nb)


def _inline(text: str):
    """Docutils nodes for a heading's text: `code` as literals, $math$ as math, the rest as text."""
    from docutils import nodes

    out = nodes.inline()
    for part in re.split(r"(`[^`]+`|\$[^$]+\$)", text):
        if not part:
            continue
        if part.startswith("`"):
            out += nodes.literal(text=part[1:-1])
        elif part.startswith("$"):
            out += nodes.math(text=part[1:-1])
        else:
            out += nodes.Text(part)
    return out


def _ref(label: str, text: str):
    """A placeholder for a link to a cell's target; :func:`_resolve_links` turns it into a reference.

    (Not a ``pending_xref``: Sphinx rebuilds an explicit ``:ref:``'s text with ``astext()``, which
    would drop the math of a section title.)
    """
    node = _inline(text)
    node["ledger_label"] = label
    return node


def _resolve_links(app, doctree, fromdocname) -> None:
    """doctree-resolved: each placeholder becomes a reference to its cell's MyST target."""
    from docutils import nodes
    from sphinx.util import logging

    labels = app.env.domaindata["std"]["anonlabels"]  # every target, titled or not: (docname, id)
    for node in list(doctree.findall(nodes.inline)):
        label = node.get("ledger_label")
        if not label:
            continue
        if label not in labels:
            logging.getLogger(__name__).warning(f"equation ledger: no target {label!r}", location=node)
            node.replace_self(nodes.inline("", "", *node.children))
            continue
        docname, labelid = labels[label]
        uri = app.builder.get_relative_uri(fromdocname, docname) + "#" + labelid
        node.replace_self(nodes.reference("", "", *node.children, internal=True, refuri=uri))


def _cell_links(cells, kinds) -> list:
    from docutils import nodes

    out = []
    for c in cells:
        if c.kind not in kinds:
            continue
        if out:
            out.append(nodes.Text("; "))
        text = f"{c.chapter} §{c.section}" if c.section else c.chapter
        if c.kind in KIND_TITLES and len(kinds) > 1:
            text = f"{KIND_TITLES[c.kind]}: {text}"
        out.append(_ref(c.label, text))
    return out


def _make_directive():
    from docutils import nodes
    from sphinx.util.docutils import SphinxDirective

    class EquationLedger(SphinxDirective):
        has_content = False

        def run(self):
            from ddpm_ref.paper import LEDGER

            root = Path(self.env.srcdir)
            cells, problems = scan(root, LEDGER)
            for p in problems:
                self.state.document.reporter.warning(f"equation ledger: {p}", line=self.lineno)
            for nbpath in (root / "notebooks").glob("*.ipynb"):
                self.env.note_dependency(str(nbpath))
            impl = implementing_functions(LEDGER)
            by_key: dict[str, list[LedgerCell]] = {}
            for c in cells:
                for k in c.keys:
                    by_key.setdefault(k, []).append(c)

            headers = ("Row", "Statement", "Derived in", "Checks", "Implemented by")
            table = nodes.table(classes=["equation-ledger"])
            tgroup = nodes.tgroup(cols=len(headers))
            table += tgroup
            for w in (10, 30, 18, 28, 14):
                tgroup += nodes.colspec(colwidth=w)
            thead = nodes.thead()
            row = nodes.row()
            for h in headers:
                row += nodes.entry("", nodes.paragraph(text=h))
            thead += row
            tgroup += thead
            tbody = nodes.tbody()
            for key, entry in LEDGER.items():
                rc = by_key.get(key, [])
                row = nodes.row(ids=[f"ledger-row-{key}"])
                row += nodes.entry("", nodes.paragraph(text=entry.label))
                text = entry.title
                if entry.source != "ho2020denoising":
                    text += f" {{cite:p}}`{entry.source}`"
                inline, msgs = self.state.inline_text(text, self.lineno)  # MyST: $math$ and {cite:p}
                stmt = nodes.paragraph("", "", *inline, *msgs)
                row += nodes.entry("", stmt)
                row += nodes.entry("", nodes.paragraph("", "", *(_cell_links(rc, ("derivation",)) or
                                                                  [nodes.Text("—")])))
                row += nodes.entry("", nodes.paragraph("", "", *(_cell_links(rc, tuple(KIND_TITLES)) or
                                                                  [nodes.Text("—")])))
                funcs = impl.get(key, [])
                para = nodes.paragraph()
                for j, f in enumerate(funcs):
                    if j:
                        para += nodes.Text(", ")
                    para += nodes.literal(text=f.removeprefix("ddpm_ref."))
                if not funcs:
                    para += nodes.Text("—")
                row += nodes.entry("", para)
                tbody += row
            tgroup += tbody
            counts = {k: sum(1 for c in cells if c.kind == k) for k in KINDS}
            summary = nodes.paragraph(text=(
                f"{len(LEDGER)} rows; {counts['derivation']} derivation cells, {counts['check-symbolic']} symbolic, "
                f"{counts['check-numerical']} numerical and {counts['check-independent']} independent-implementation "
                "checks across the chapters."))
            return [summary, table]

    return EquationLedger


def setup(app):
    app.connect("source-read", _add_targets)
    app.connect("doctree-resolved", _resolve_links)
    app.add_directive("equation-ledger", _make_directive())
    return {"parallel_read_safe": True, "parallel_write_safe": True}
