r"""Local Sphinx extension: small fixes to the HTML that Jupyter Book 1.0.4 produces.

Duplicate inline scripts. Under Sphinx 7.4 an inline script that an extension adds after the
builder started (``app.add_js_file(None, body=...)``, as sphinx-thebe and sphinx-togglebutton
do) is registered twice, once with filename ``None`` and once with ``''``, so every page
carried ``const THEBE_JS_URL = ...`` twice and the browser threw "Identifier 'THEBE_JS_URL'
has already been declared". The headless-browser check (tools/check_book_html.py) fails on
any uncaught script error, so this extension drops the exact duplicates from each page.

MathJax on every page. Sphinx loads MathJax only on pages whose body contains mathematics, but
the navigation sidebar of every page shows every chapter title, and a title may contain math
(e.g. "The $\epsilon$-parameterisation"). On a page without math of its own, such a title was
left as raw ``\(\epsilon\)``. ``html_assets_policy = "always"`` loads the (offline) MathJax on
every page, so titles are typeset everywhere.

Math in cross-reference text. A ``{ref}`` to a section takes the section's title as its link
text, but Sphinx stores that title as plain text, so a heading such as "$L_\mathrm{simple}$:
dropping the weight" became the link text "L_\mathrm{simple}: dropping the weight". This
extension records the title nodes (math included) of every section whose heading has math, and
puts them back into each reference that shows exactly that title. (Chapter titles avoid TeX
altogether: the theme's previous/next buttons strip markup from them.)

``\tag`` in a display equation (the PDF). A chapter may name an equation by the paper's number,
``$$ L_\text{simple} = ... \tag{eq. 14} $$``: MathJax shows "(eq. 14)", but Sphinx's LaTeX writer
wraps every display equation in ``\begin{split}`` (or ``aligned``), where amsmath refuses
``\tag`` ("\tag not allowed here"), and ``make pdf`` stopped. For the LaTeX builder the tag is
moved outside that inner environment, just before ``\end{equation*}``/``\end{align*}``.
"""

from __future__ import annotations

import posixpath
import re

from docutils import nodes


def _dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen = set()
    unique = []
    for js in scripts:
        attrs = getattr(js, "attributes", {}) or {}
        key = (
            getattr(js, "filename", js) or "",
            getattr(js, "priority", None),
            tuple(sorted((k, str(v)) for k, v in attrs.items())),
        )
        if key in seen:
            continue
        seen.add(key)
        unique.append(js)
    context["script_files"] = unique


def _record_math_titles(app, doctree) -> None:
    """doctree-read: remember the title nodes of sections whose heading contains math."""
    env = app.env
    if not hasattr(env, "ddpm_math_titles"):
        env.ddpm_math_titles = {}
    store = env.ddpm_math_titles
    for key in [k for k in store if k[0] == env.docname]:
        del store[key]
    for section in doctree.findall(nodes.section):
        title = section.next_node(nodes.title)
        if title is None or next(iter(title.findall(nodes.math)), None) is None:
            continue
        kids = [c.deepcopy() for c in title.children]
        for ident in section["ids"]:
            store[(env.docname, ident)] = (title.astext(), kids)


def _purge_math_titles(app, env, docname) -> None:
    for key in [k for k in getattr(env, "ddpm_math_titles", {}) if k[0] == docname]:
        del env.ddpm_math_titles[key]


def _merge_math_titles(app, env, docnames, other) -> None:
    if not hasattr(env, "ddpm_math_titles"):
        env.ddpm_math_titles = {}
    env.ddpm_math_titles.update(getattr(other, "ddpm_math_titles", {}))


def _restore_math_in_refs(app, doctree, docname) -> None:
    """doctree-resolved: give {ref} links to such sections their title with the math."""
    store = getattr(app.env, "ddpm_math_titles", {})
    if not store:
        return
    for ref in doctree.findall(nodes.reference):
        if not ref.get("internal") or len(ref.children) != 1:
            continue
        inner = ref.children[0]
        if not isinstance(inner, nodes.inline) or "std-ref" not in inner.get("classes", []):
            continue
        if "refid" in ref:
            key = (docname, ref["refid"])
        else:
            path, _, anchor = ref.get("refuri", "").partition("#")
            target = posixpath.normpath(posixpath.join(posixpath.dirname(docname), path))
            key = (target[: -len(".html")] if target.endswith(".html") else target, anchor)
        found = store.get(key)
        if found is not None and inner.astext() == found[0]:
            inner.children = []
            inner.extend(c.deepcopy() for c in found[1])


_TAG = re.compile(r"\\tag\*?\{[^{}]*\}")


def latex_tag_outside(text: str, label: str | None, number_all: bool) -> str | None:
    """The LaTeX of a display equation with one ``\\tag{...}``: Sphinx's wrapping
    (``sphinx.util.math.wrap_displaymath``) of the equation without its tag, the tag put back just
    before the outer ``\\end{...}``. None when the text has no tag or several (left to LaTeX)."""
    from sphinx.util.math import wrap_displaymath

    tags = _TAG.findall(text)
    if len(tags) != 1:
        return None
    wrapped = wrap_displaymath(_TAG.sub("", text), label, number_all)
    end = wrapped.rindex("\\end{")
    return wrapped[:end] + tags[0] + wrapped[end:]


def _latex_tags(app, doctree, docname) -> None:
    """doctree-resolved (LaTeX only): display equations with ``\\tag`` (see the module docstring)."""
    if app.builder.format != "latex":
        return
    for node in doctree.findall(nodes.math_block):
        if node.get("nowrap"):
            continue
        label = f"equation:{node['docname']}:{node['label']}" if node.get("label") else None
        latex = latex_tag_outside(node.astext(), label, app.config.math_number_all)
        if latex is None:
            continue
        node.clear()
        node += nodes.Text(latex)
        node["nowrap"] = True  # the writer emits the text as it is ...
        node["label"] = None  # ... and no second \label (it is inside the equation now)


def setup(app):
    app.set_html_assets_policy("always")
    app.connect("doctree-read", _record_math_titles)
    app.connect("env-purge-doc", _purge_math_titles)
    app.connect("env-merge-info", _merge_math_titles)
    app.connect("doctree-resolved", _restore_math_in_refs)
    app.connect("doctree-resolved", _latex_tags)
    # after the theme and the other extensions (default priority 500) filled the context
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
