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
"""

from __future__ import annotations


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


def setup(app):
    app.set_html_assets_policy("always")
    # after the theme and the other extensions (default priority 500) filled the context
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
