"""Open the built book's pages in real headless Chromium and check what a reader sees.

For every page listed in ``_toc.yml`` this script loads ``_build/html/<page>.html`` in
Debian's ``/usr/bin/chromium`` (no network, a fresh profile) and checks, after MathJax has
finished and every image has either loaded or failed:

* every math element Sphinx emitted (``.math``) was typeset by MathJax (it contains an
  ``mjx-container``) and MathJax reported no TeX error (``mjx-merror``);
* no raw TeX delimiters (``\\(``, ``\\[``, ``$$``, ``\\begin{``) are left in the text a
  reader sees (text inside ``pre``/``code``, i.e. program listings, is exempt);
* every ``<img>`` loaded (``complete`` and ``naturalWidth > 0``), and every link to a local
  file (the download button's ``_sources/...ipynb`` among them) points to a file that exists;
* every file the page requested (scripts, styles, fonts, images) loaded, and the page's
  scripts threw no uncaught exception;
* exactly one search box is visible, at a 1280 x 800 window and at a 390-pixel phone width;
* **width** (at 1280 x 800): no display equation (``mjx-container[display]``), code block
  (those a cell's Markdown output shows included), cell output or table needs sideways scrolling
  or reaches past its container: each is measured against the box that actually scrolls or
  clips it (a numbered equation against its mjx-container, which sits beside the equation
  number and is narrower than the math div around both); (at 390 px)
  nothing is clipped and the page itself does not scroll sideways (an equation, a code block or
  a table may scroll inside its own box there). Each offender is reported with its page, kind
  and a snippet. Which pages must pass is a switch (``--enforce-width`` or the environment
  variable ``DDPM_BOOK_ENFORCE_WIDTH``: comma-separated globs over toc names such as
  ``book/*`` or ``notebooks/02_*``, or ``all``); on the other pages offenders are printed as
  notes (``--width-report FILE`` writes them all as JSON);
* **dark mode** (the theme's switch, ``data-theme="dark"``): every figure is legible, i.e. an
  image with transparent pixels sits on a light opaque backdrop (matplotlib draws dark lines);
* every image has alt text that is not merely its file name (what docutils writes when a
  figure has none);
* **accessibility**: axe-core (``node_modules/axe-core``, pinned in package.json, installed by
  ``npm ci``) runs inside the page through the same DevTools session, in light mode (all rules)
  and in dark mode (colour contrast); any serious or critical violation fails the page. Images
  without alt text are listed with the figure's caption/cell, for the notebooks' final pass.

The browser is driven through the Chrome DevTools Protocol over ``--remote-debugging-pipe``
(file descriptors 3 and 4), so nothing beyond the standard library and the Debian package is
needed: no WebDriver, no browser download.

Usage::

    python tools/check_book_html.py            # all toc pages under _build/html
    python tools/check_book_html.py --html-dir _build/html --toc _toc.yml
    python tools/check_book_html.py page.html other.html   # explicit files
    python tools/check_book_html.py --enforce-width all    # width rules on every page
    python tools/check_book_html.py --width-report _build/width_report.json

Exit status 0 when every page passes, 1 otherwise (each problem is printed).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import fnmatch
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
AXE_JS = REPO / "node_modules" / "axe-core" / "axe.min.js"
#: the viewports checked: a common desktop window and a phone
DESKTOP = (1280, 800)
PHONE = (390, 844)
#: pages whose width offenders fail the check unless DDPM_BOOK_ENFORCE_WIDTH / --enforce-width
#: say otherwise: every page (a chapter being refitted can be left out for a while with globs,
#: e.g. DDPM_BOOK_ENFORCE_WIDTH="book/*,search,notebooks/0[1-4]_*").
DEFAULT_ENFORCE_WIDTH = "all"
AXE_IMPACTS = ("serious", "critical")

# Flags for a root, offline, display-less machine (see the machine notes): no sandbox (root),
# no GPU, no network chatter, a fresh profile per run.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--remote-debugging-pipe",
)

# Runs inside the page. Waits for MathJax (when the page has math) and for every image, then
# reports what it found. Returns a JSON-serialisable object.
PAGE_PROBE_JS = r"""
(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const deadline = Date.now() + %(timeout_ms)d;
  const mathEls = Array.from(document.querySelectorAll('.math'));
  let mathjaxState = 'not needed';
  if (mathEls.length > 0) {
    mathjaxState = 'not loaded';
    const hasMathjaxScript = Array.from(document.scripts)
      .some((s) => /mathjax/i.test(s.src || ''));
    const waitUntil = Math.min(deadline, Date.now() + (hasMathjaxScript ? %(timeout_ms)d : 0));
    while (Date.now() < waitUntil) {
      if (window.MathJax && MathJax.startup && MathJax.startup.promise) break;
      await sleep(50);
    }
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      try {
        await Promise.race([MathJax.startup.promise, sleep(Math.max(0, deadline - Date.now()))]);
        mathjaxState = 'ready';
      } catch (e) {
        mathjaxState = 'startup failed: ' + e;
      }
    }
  }
  const imgs = Array.from(document.images);
  for (const img of imgs) { if (img.loading === 'lazy') img.loading = 'eager'; }
  await Promise.race([
    Promise.all(imgs.map((img) => img.complete ? null : new Promise((r) => {
      img.addEventListener('load', r); img.addEventListener('error', r);
    }))),
    sleep(Math.max(0, deadline - Date.now())),
  ]);
  const untypeset = mathEls.filter((el) => !el.querySelector('mjx-container'))
    .map((el) => el.textContent.trim().slice(0, 80));
  const texErrors = Array.from(document.querySelectorAll('mjx-merror'))
    .map((el) => (el.getAttribute('data-mjx-error') || el.textContent).slice(0, 120));
  const skip = new Set(['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEXTAREA', 'PRE', 'CODE', 'TEMPLATE',
                        'MJX-CONTAINER', 'MJX-ASSISTIVE-MML', 'ANNOTATION']);
  const rawTex = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode(node) {
      for (let el = node.parentElement; el; el = el.parentElement) {
        if (skip.has(el.tagName.toUpperCase())) return NodeFilter.FILTER_REJECT;
      }
      return NodeFilter.FILTER_ACCEPT;
    },
  });
  const delimiters = ['\\(', '\\[', '$$', '\\begin{'];
  // TeX that lost its delimiters, e.g. a cross-reference whose text Sphinx took from a heading
  // with math ("L_\\mathrm{simple}: ..."): a TeX command or a braced sub/superscript.
  const bareTex = /\\[A-Za-z]+|[_^]\{/;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const text = n.nodeValue;
    const hits = delimiters.map((d) => text.indexOf(d)).filter((i) => i >= 0);
    const bare = text.search(bareTex);
    if (bare >= 0) hits.push(bare);
    if (hits.length) {
      const i = Math.min(...hits);
      rawTex.push(JSON.stringify(text.slice(Math.max(0, i - 30), i + 50)));
    }
  }
  const brokenImages = imgs.filter((img) => !(img.complete && img.naturalWidth > 0))
    .map((img) => img.getAttribute('src'));
  // alt text that is only a file name (docutils writes the image's path when there is none)
  const fileAlt = imgs.filter((img) => {
    const alt = (img.getAttribute('alt') || '').trim();
    return alt && (alt === img.getAttribute('src') || /^[\w./-]+\.(png|jpe?g|gif|svg|webp)$/i.test(alt));
  }).map((img) => img.getAttribute('src'));
  const localLinks = Array.from(document.querySelectorAll('a[href]'))
    .map((a) => a.href).filter((h) => h.startsWith('file:'));
  return {
    title: document.title,
    localLinks,
    mathjax: mathjaxState,
    n_math: mathEls.length,
    n_typeset: document.querySelectorAll('mjx-container').length,
    untypeset, texErrors, rawTex,
    n_images: imgs.length,
    n_code: document.querySelectorAll('div.highlight pre').length,
    brokenImages, fileAlt,
  };
})()
"""


# Runs inside the page at the current viewport. Measures every display equation, code block
# (program listings anywhere, the shell commands a cell's Markdown output shows among them), cell
# output and table, and counts the visible search boxes.
# mode "desktop": a block must fit: its content is measured against the box that actually
# scrolls or clips it (the nearest element, itself included, whose overflow-x is not visible:
# for a display equation the mjx-container, which sits BESIDE the equation number and is that
# much narrower than the math div around both), and the block must not reach past its container
# or the article's right edge;
# mode "phone": nothing may be clipped (a block may scroll inside its own box) and the page
# itself must not scroll sideways.
LAYOUT_PROBE_JS = r"""
(async () => {
  const mode = %(mode)s;
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const tex = new Map();
  try {
    for (const item of MathJax.startup.document.math) tex.set(item.typesetRoot, item.math);
  } catch (e) { /* no MathJax on this page */ }
  const article = document.querySelector('article.bd-article') || document.querySelector('[role=main]')
    || document.body;
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) return false;
    for (let e = el; e; e = e.parentElement) {
      const cs = getComputedStyle(e);
      if (cs.display === 'none' || cs.visibility === 'hidden') return false;
    }
    return true;
  };
  const snippet = (el, kind) => {
    let t = kind === 'equation' ? (tex.get(el) || el.textContent) : el.textContent;
    t = (t || '').replace(/\s+/g, ' ').trim();
    if (el.tagName === 'PRE') {
      const lines = (el.textContent || '').replace(/\n$/, '').split('\n');
      let longest = lines.reduce((a, b) => (b.length > a.length ? b : a), '');
      return `${lines.length} lines, longest ${longest.length} chars: ${longest.trim().slice(0, 90)}`;
    }
    return t.slice(0, 100);
  };
  const tag = (e) => `${e.tagName.toLowerCase()}.${(e.className || '').toString().split(' ')[0]}`;
  const scrollsX = (el) => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
  const clipsX = (el) => ['hidden', 'clip'].includes(getComputedStyle(el).overflowX);
  const blocks = [];
  const seen = new Set();
  const add = (kind, el, contentWidth) => {
    if (seen.has(el)) return;
    seen.add(el);
    blocks.push({ kind, el, contentWidth });
  };
  const inOutput = (el) => !!el.closest('.cell_output');
  for (const el of article.querySelectorAll('mjx-container[display="true"]')) {
    const m = el.querySelector('mjx-math');
    add('equation', el, m ? m.getBoundingClientRect().width : el.scrollWidth);
  }
  // every listing: a cell's code, a code block in the prose, and inside a cell's output both the
  // printed text and the code blocks its Markdown displays (e.g. shell commands)
  for (const el of article.querySelectorAll('pre')) {
    if (el.closest('mjx-container')) continue;
    add(inOutput(el) ? 'output' : 'code', el, el.scrollWidth);
  }
  for (const el of article.querySelectorAll('.cell_output .output.text_html, .cell_output img')) {
    add('output', el, el.tagName === 'IMG' ? el.getBoundingClientRect().width : el.scrollWidth);
  }
  for (const el of article.querySelectorAll('table')) {
    add(inOutput(el) ? 'output' : 'table', el, el.getBoundingClientRect().width);
  }
  // the box that scrolls or clips a block sideways: the nearest element (the block itself
  // included) inside the article whose overflow-x is not visible; null if none
  const clipBox = (el) => {
    for (let e = el; e && e !== article; e = e.parentElement) {
      if (getComputedStyle(e).overflowX !== 'visible') return e;
    }
    return null;
  };
  const ar = article.getBoundingClientRect();
  const articleRight = ar.right - parseFloat(getComputedStyle(article).paddingRight || '0');
  const offenders = [];
  const reported = new Set();  // a scrolling box is reported once (a table in a scrolling output)
  const vw = document.documentElement.clientWidth;
  for (const { kind, el, contentWidth } of blocks) {
    if (!visible(el)) continue;
    const r = el.getBoundingClientRect();
    const container = el.parentElement;
    const cr = container.getBoundingClientRect();
    let why = null;
    let box = null;
    if (mode === 'desktop') {
      box = clipBox(el);
      const limit = box || container;
      const have = limit.clientWidth;
      const need = Math.max(contentWidth, box ? box.scrollWidth : 0);
      const named = box && box !== el ? ` (${tag(box)})` : '';
      if (need > have + 1) why = `content ${Math.round(need)} px > box ${Math.round(have)} px${named}`;
      else if (r.right > cr.right + 1) why = `right edge ${Math.round(r.right - cr.right)} px past its container`;
      else if (r.right > articleRight + 1) why = `right edge ${Math.round(r.right - articleRight)} px past the column`;
    } else {
      // phone: find the nearest box that scrolls sideways; content wider than a box that clips
      // is cut; a block running past the screen with no scrolling box around it is cut too.
      let scroller = null;
      for (let e = el; e && e !== document.body; e = e.parentElement) {
        if (scrollsX(e) && e.scrollWidth > e.clientWidth + 1) { scroller = e; break; }
        if (clipsX(e) && e.scrollWidth > e.clientWidth + 1) {
          why = `clipped by ${tag(e)} (${e.scrollWidth} px in ${e.clientWidth} px)`;
          box = e;
          break;
        }
        if (scrollsX(e)) { scroller = e; break; }
      }
      if (!why) {
        const sr = scroller ? scroller.getBoundingClientRect() : r;
        const right = scroller ? sr.right : Math.max(r.right, r.left + contentWidth);
        if (right > vw + 1) why = `runs ${Math.round(right - vw)} px past the ${vw}-px screen`;
        box = scroller;
      }
    }
    if (!why) continue;
    if (box && box !== el && reported.has(box)) continue;
    if (box) reported.add(box);
    reported.add(el);
    offenders.push({ kind, why, snippet: snippet(el, kind) });
  }
  const pageWidth = document.documentElement.scrollWidth;
  if (pageWidth > vw + 1) {
    // the widest element that sticks out, to name the culprit
    const boxed = (el) => {
      for (let e = el.parentElement; e && e !== document.body; e = e.parentElement) {
        if (getComputedStyle(e).overflowX !== 'visible') return true;
      }
      return false;
    };
    let worst = null;
    for (const el of document.body.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.width > 0 && r.right > vw + 1 && !boxed(el) && (!worst || r.right > worst.r)) worst = { r: r.right, el };
    }
    const name = (el) => `${el.tagName.toLowerCase()}.${(el.className || '').toString().split(' ')[0]}`;
    const text = (el) => (el.textContent || '').replace(/\s+/g, ' ').trim().slice(0, 80);
    offenders.push({ kind: 'page', why: `the page scrolls sideways (${pageWidth} px in a ${vw}-px window)`,
                     snippet: worst ? `${name(worst.el)}: ${text(worst.el)}` : '' });
  }
  // search boxes of the page's frame (the search page's own field is its content; the
  // theme's pop-up search dialog is closed); a control inside another one counts once
  const sel = '.search-button-field, button.search-button, form.bd-search, input[type=search]';
  const searchBoxes = Array.from(document.querySelectorAll(sel))
    .filter((el) => !el.closest('dialog, .bd-search-container') && visible(el))
    .filter((el) => !el.parentElement.closest(sel)).length;
  const themed = !!document.querySelector('.bd-sidebar-primary, .bd-header-article');
  return { offenders, searchBoxes, themed, viewport: vw };
})()
"""

# Runs inside the page after the switch to dark mode: every visible image with the colour of
# the backdrop it is drawn on (its own background, else the first opaque ancestor's).
DARK_PROBE_JS = r"""
(async () => {
  // no colour transitions (the theme animates the switch; axe would see colours half-way)
  const still = document.createElement('style');
  still.textContent = '*, *::before, *::after { transition: none !important; animation: none !important; }';
  document.head.appendChild(still);
  document.documentElement.dataset.theme = 'dark';
  document.documentElement.dataset.mode = 'dark';
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const parse = (c) => {
    const m = c.match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const v = m[1].split(',').map((x) => parseFloat(x));
    return { r: v[0], g: v[1], b: v[2], a: v.length > 3 ? v[3] : 1 };
  };
  const backdrop = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0.95) return c;
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  const article = document.querySelector('article.bd-article') || document.body;
  const imgs = Array.from(article.querySelectorAll('img')).filter((img) => img.getBoundingClientRect().width > 0);
  return {
    theme: getComputedStyle(document.body).backgroundColor,
    images: imgs.map((img) => ({ src: img.currentSrc || img.src, backdrop: backdrop(img) })),
  };
})()
"""

# axe-core inside the page (its source is evaluated first). Returns the violations.
#
# Speed: a chapter page has 20-30 thousand elements, nearly all MathJax's markup of the formulas
# and Pygments' one span per code token, and a full audit took 20-40 s per page. While axe runs,
# each typeset formula is swapped for a one-letter stand-in (same colours: it inherits them) and
# each code block's tokens for its plain text (same box, background and base colour); both are
# put back afterwards. The token colours are the same on every page (one Pygments style per
# mode), so they are audited once per browser session, on the first page with code, in light
# and dark mode (``tokens: true``: colour contrast of the code blocks only, untouched).
# ``preload: false``: axe would otherwise fetch the style sheets, which a file:// page refuses.
AXE_RUN_JS = r"""
(async () => {
  const options = Object.assign({ preload: false }, %(options)s);
  const tokens = %(tokens)s;
  const stash = [];
  if (!tokens) {
    for (const el of document.querySelectorAll('mjx-container')) {
      const stand = document.createElement('span');
      stand.textContent = 'x';
      if (el.getAttribute('display') === 'true') stand.style.display = 'block';
      el.replaceWith(stand);
      stash.push([stand, el]);
    }
    for (const pre of document.querySelectorAll('div.highlight pre')) {
      const stand = pre.cloneNode(false);
      stand.textContent = pre.textContent;
      pre.replaceWith(stand);
      stash.push([stand, pre]);
    }
  }
  const context = tokens ? { include: [['div.highlight pre']] } : document;
  let result;
  try {
    result = await axe.run(context, options);
  } finally {
    for (const [stand, el] of stash) stand.replaceWith(el);
  }
  return result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map((n) => ({ target: n.target.join(' '), html: n.html.slice(0, 160),
                                  summary: (n.failureSummary || '').slice(0, 200) })),
  }));
})()
"""


# Runs on the search page opened with ?q=...: waits until Sphinx's searchtools.js has finished
# (its summary line says "Search finished, found N page(s) ..." or "did not match"), then until
# every listed result has its passage. Sphinx adds the results ONE AT A TIME (a 5-ms timer per
# result) and each passage later still (a fetch per result), so neither "some results, each
# with a passage" nor "no change for a while" means the search is done: only the summary does.
# Returns {finished, summary, found, items}; ``found`` is the count the summary states.
SEARCH_PROBE_JS = r"""
(async () => {
  const deadline = Date.now() + %(ms)d;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const items = () => Array.from(document.querySelectorAll('#search-results li'));
  const summaryEl = () => document.querySelector('#search-results p.search-summary');
  const summary = () => ((summaryEl() || {}).textContent || '').trim();
  const finished = () => /Search finished|did not match/.test(summary());
  while (Date.now() < deadline && !finished()) await sleep(50);
  const done = finished();
  // the passages arrive after the summary (one fetch per result): wait for each of them, or
  // until they stop coming (a result without text to cut a passage from never gets one)
  let last = -1, stableSince = Date.now();
  while (done && Date.now() < deadline) {
    const its = items();
    const withPassage = its.filter((li) => li.querySelector('p.context')).length;
    if (withPassage === its.length) break;
    if (withPassage !== last) { last = withPassage; stableSince = Date.now(); }
    else if (Date.now() - stableSince > 1000) break;
    await sleep(50);
  }
  const m = summary().match(/found (\d+) page/);
  return {
    finished: done,
    summary: summary(),
    found: m ? parseInt(m[1], 10) : (/did not match/.test(summary()) ? 0 : null),
    items: items().map((li) => ({ title: (li.querySelector('a') || { textContent: '' }).textContent,
      href: (li.querySelector('a') || { getAttribute: () => '' }).getAttribute('href'),
      passage: (li.querySelector('p.context') || { textContent: '' }).textContent })),
  };
})()"""


class SearchResults(list):
    """The results a search page listed (each ``{"title", "href", "passage"}``), with the
    summary line Sphinx printed when it finished (``summary``) and the count it states."""

    def __init__(self, items, summary: str = "", found: int | None = None):
        super().__init__(items)
        self.summary = summary
        self.found = found


@dataclass
class Offender:
    """One block that does not fit (width rules)."""

    viewport: str  # "1280x800" or "390px"
    kind: str  # equation, code, output, table, page
    why: str
    snippet: str

    def __str__(self) -> str:
        return f"{self.viewport} {self.kind}: {self.why}: {self.snippet}"


def _luminance(c: dict) -> float:
    def lin(v: float) -> float:
        v /= 255.0
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    return 0.2126 * lin(c["r"]) + 0.7152 * lin(c["g"]) + 0.0722 * lin(c["b"])


def transparent_fraction(src: str) -> float | None:
    """Fraction of an image's pixels that are not opaque (alpha < 250); None if unreadable."""
    from PIL import Image

    try:
        if src.startswith("data:"):
            data = base64.b64decode(src.split(",", 1)[1])
            im = Image.open(io.BytesIO(data))
        else:
            path = Path(unquote(urlsplit(src).path))
            if path.suffix.lower() == ".svg":
                return 1.0  # an SVG's background is transparent unless it paints one
            im = Image.open(path)
        im.load()
    except (OSError, ValueError):
        return None
    if "A" not in im.getbands() and "transparency" not in im.info:
        return 0.0
    alpha = im.convert("RGBA").getchannel("A")
    hist = alpha.histogram()
    return sum(hist[:250]) / max(1, im.width * im.height)


class BrowserError(RuntimeError):
    """Chromium could not be started or stopped answering."""


@dataclass
class PageReport:
    """What one page showed. ``problems`` is empty when the page passed."""

    path: Path
    n_math: int = 0
    n_typeset: int = 0
    n_images: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    #: blocks that break the width rules (problems too when the page's width rules are enforced)
    width: list[Offender] = field(default_factory=list)
    #: images without alt text, for the notebooks' final pass (also an axe violation)
    missing_alt: list[str] = field(default_factory=list)
    n_axe_rules: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


class Chromium:
    """A headless Chromium driven over the DevTools pipe. Use as a context manager."""

    def __init__(self, executable: str = CHROMIUM, timeout: float = 60.0):
        self.executable = executable
        self.timeout = timeout
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict] = []
        self._axe_source: str | None = None
        self._tokens_audited = False  # the code blocks' token colours (see AXE_RUN_JS)
        self.proc: subprocess.Popen | None = None

    # -- process ------------------------------------------------------------------------
    def __enter__(self) -> Chromium:
        if not (os.path.isfile(self.executable) and os.access(self.executable, os.X_OK)):
            raise BrowserError(
                f"Chromium not found at {self.executable}; on Debian: apt-get install -y chromium"
            )
        self.profile = tempfile.mkdtemp(prefix="ddpm-book-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Move the child's ends above 10 so that dup2 onto 3 and 4 cannot clobber them.
        hi_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        hi_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def wire_pipes() -> None:  # runs in the child between fork and exec
            os.dup2(hi_r, 3)  # Chromium reads commands from fd 3 ...
            os.dup2(hi_w, 4)  # ... and writes replies and events to fd 4.

        cmd = [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            close_fds=False,  # our own fds are non-inheritable; 3 and 4 are made by dup2
            preexec_fn=wire_pipes,
        )
        os.close(hi_r)
        os.close(hi_w)
        try:
            self.send("Browser.getVersion")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.send("Browser.close", timeout=10)
            except (BrowserError, OSError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    # -- protocol -----------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise BrowserError("Chromium exited:\n" + self._stderr_tail())
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        msg: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, ev in enumerate(self._events):
                if ev["method"] == method and ev.get("sessionId") == session:
                    return self._events.pop(i)
            reply = self._read_message(deadline)
            if "method" in reply:
                self._events.append(reply)

    def take_events(self, session: str) -> list[dict]:
        mine = [e for e in self._events if e.get("sessionId") == session]
        self._events = [e for e in self._events if e.get("sessionId") != session]
        return mine

    # -- pages --------------------------------------------------------------------------
    def check_page(self, path: Path, timeout: float = 30.0, enforce_width: bool = True,
                   axe: bool = True) -> PageReport:
        """Load one HTML file and report what is wrong with it (see the module docstring).

        ``enforce_width``: width offenders are problems (else only listed in ``report.width``).
        ``axe``: run axe-core (a problem if its source is missing: run ``npm ci``).
        """
        path = Path(path).resolve()
        report = PageReport(path)
        start = time.monotonic()
        if not path.is_file():
            report.problems.append("page was not built (file missing)")
            return report
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        try:
            for domain in ("Page", "Network", "Runtime"):
                self.send(f"{domain}.enable", session=session)
            self._viewport(session, *DESKTOP)
            nav = self.send("Page.navigate", {"url": path.as_uri()}, session=session)
            if nav.get("errorText"):
                report.problems.append(f"navigation failed: {nav['errorText']}")
                return report
            self.wait_event("Page.loadEventFired", session, timeout=timeout)
            found = self._evaluate(session, PAGE_PROBE_JS % {"timeout_ms": int(timeout * 1000)},
                                   timeout + 10, report)
            if found is None:
                return report
            report.n_math = found["n_math"]
            report.n_typeset = found["n_typeset"]
            report.n_images = found["n_images"]
            if found["n_math"] and found["mathjax"] != "ready":
                report.problems.append(
                    f"page has {found['n_math']} math elements but MathJax is {found['mathjax']}"
                )
            if found["untypeset"]:
                report.problems.append(
                    f"{len(found['untypeset'])} math element(s) not typeset, e.g. "
                    f"{found['untypeset'][:3]}"
                )
            for err in found["texErrors"][:5]:
                report.problems.append(f"MathJax TeX error: {err}")
            for snippet in found["rawTex"][:5]:
                report.problems.append(f"raw TeX left in the rendered text: {snippet}")
            for src in found["brokenImages"]:
                report.problems.append(f"image did not load: {src}")
            for src in found["fileAlt"]:
                report.missing_alt.append(src)
                report.problems.append(f"image whose alt text is its file name (say what it shows): {src}")
            for href in sorted(set(found["localLinks"])):
                linked = Path(unquote(urlsplit(href).path))
                if not linked.exists():
                    report.problems.append(f"link to a missing file: {href}")
            self._check_layout(session, report, "desktop", f"{DESKTOP[0]}x{DESKTOP[1]}")
            tokens = axe and not self._tokens_audited and found["n_code"] > 0
            if axe:
                self._check_axe(session, report, "light", None)
                if tokens:
                    self._check_axe(session, report, "light, code tokens", {"runOnly": ["color-contrast"]}, True)
            self._check_dark(session, report)
            if axe:
                self._check_axe(session, report, "dark", {"runOnly": ["color-contrast"]})
                if tokens:
                    self._check_axe(session, report, "dark, code tokens", {"runOnly": ["color-contrast"]}, True)
                    self._tokens_audited = True
            self._viewport(session, *PHONE, mobile=True)
            self._check_layout(session, report, "phone", f"{PHONE[0]}px")
            if enforce_width:
                report.problems.extend(f"does not fit: {o}" for o in report.width)
            report.problems.extend(self._failed_requests_and_exceptions(session))
        finally:
            self.send("Target.closeTarget", {"targetId": target})
            report.seconds = time.monotonic() - start
        return report

    # -- the checks run on a loaded page ------------------------------------------------------
    def _viewport(self, session: str, width: int, height: int, mobile: bool = False) -> None:
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
                  session=session)

    def _evaluate(self, session: str, expression: str, timeout: float, report: PageReport):
        result = self.send("Runtime.evaluate",
                           {"expression": expression, "awaitPromise": True, "returnByValue": True},
                           session=session, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            report.problems.append(f"page probe failed: {str(text)[:300]}")
            return None
        return result["result"].get("value")

    def _check_layout(self, session: str, report: PageReport, mode: str, label: str) -> None:
        found = self._evaluate(session, LAYOUT_PROBE_JS % {"mode": json.dumps(mode)}, 30, report)
        if found is None:
            return
        report.width.extend(Offender(label, o["kind"], o["why"], o["snippet"]) for o in found["offenders"])
        if found["themed"] and found["searchBoxes"] != 1:
            report.problems.append(f"{found['searchBoxes']} search boxes visible at {label} (want exactly one)")

    def _check_dark(self, session: str, report: PageReport) -> None:
        found = self._evaluate(session, DARK_PROBE_JS, 30, report)
        if found is None:
            return
        for img in found["images"]:
            frac = transparent_fraction(img["src"])
            if frac is None:
                continue
            if frac > 0.005 and _luminance(img["backdrop"]) < 0.6:
                b = img["backdrop"]
                report.problems.append(
                    f"dark mode: figure {img['src'].rsplit('/', 1)[-1][:60]} is {frac:.0%} transparent on a dark "
                    f"backdrop rgb({b['r']:.0f}, {b['g']:.0f}, {b['b']:.0f}): give it an opaque background")

    def _check_axe(self, session: str, report: PageReport, mode: str, options: dict | None,
                   tokens: bool = False) -> None:
        if not AXE_JS.is_file():
            report.problems.append(f"axe-core is not installed ({AXE_JS} missing): run `npm ci`")
            return
        if self._axe_source is None:
            self._axe_source = AXE_JS.read_text(encoding="utf8")
        inject = f"(() => {{ if (!window.axe) {{ {self._axe_source}\n }} return typeof axe; }})()"
        loaded = self._evaluate(session, inject, 30, report)
        if loaded != "object":
            report.problems.append(f"axe-core did not load in the page ({loaded})")
            return
        run = AXE_RUN_JS % {"options": json.dumps(options or {}), "tokens": json.dumps(tokens)}
        violations = self._evaluate(session, run, 120, report)
        if violations is None:
            return
        report.n_axe_rules += 1
        for v in violations:
            if v["id"] == "image-alt" and mode == "light":
                report.missing_alt.extend(n["html"] for n in v["nodes"])
            if v["impact"] not in AXE_IMPACTS:
                continue
            where = "; ".join(f"{n['target']} {n['html'][:100]}" for n in v["nodes"][:3])
            more = f" (+{len(v['nodes']) - 3} more)" if len(v["nodes"]) > 3 else ""
            report.problems.append(f"accessibility ({mode}, {v['impact']}): {v['id']}: {v['help']}: {where}{more}")

    def search(self, search_page: Path, query: str, timeout: float = 30.0) -> SearchResults:
        """Run the book's own search page on ``query``: every result's title, link and passage,
        read once Sphinx has FINISHED the search (its summary line), not while it is still
        adding results. Raises BrowserError if the search did not finish within ``timeout`` or
        listed another number of results than its summary states."""
        url = Path(search_page).resolve().as_uri() + "?q=" + query
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            self.send("Page.enable", session=session)
            self.send("Page.navigate", {"url": url}, session=session)
            self.wait_event("Page.loadEventFired", session, timeout=timeout)
            js = SEARCH_PROBE_JS % {"ms": int(timeout * 1000)}
            result = self.send("Runtime.evaluate", {"expression": js, "awaitPromise": True, "returnByValue": True},
                               session=session, timeout=timeout + 10)
            found = result["result"].get("value")
            if not found or not found["finished"]:
                summary = (found or {}).get("summary", "")
                raise BrowserError(f"the search for {query!r} did not finish within {timeout:.0f} s "
                                   f"(summary line: {summary!r})")
            if found["found"] is not None and found["found"] != len(found["items"]):
                raise BrowserError(f"the search for {query!r} listed {len(found['items'])} results but its "
                                   f"summary says: {found['summary']!r}")
            return SearchResults(found["items"], found["summary"], found["found"])
        finally:
            self.take_events(session)
            self.send("Target.closeTarget", {"targetId": target})

    def _failed_requests_and_exceptions(self, session: str) -> list[str]:
        problems = []
        urls = {}
        for ev in self.take_events(session):
            p = ev.get("params", {})
            if ev["method"] == "Network.requestWillBeSent":
                urls[p["requestId"]] = p["request"]["url"]
            elif ev["method"] == "Network.loadingFailed" and not p.get("canceled"):
                url = urls.get(p["requestId"], "?")
                problems.append(f"resource failed to load ({p.get('errorText')}): {url}")
            elif ev["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                text = d.get("exception", {}).get("description") or d.get("text")
                problems.append(f"uncaught script exception: {str(text)[:200]}")
        return problems


def toc_pages(toc_file: Path) -> list[str]:
    """Every ``file:`` entry of a Jupyter Book ``_toc.yml`` (root first), without suffix."""
    import yaml

    toc = yaml.safe_load(Path(toc_file).read_text(encoding="utf8"))
    pages = [toc["root"]]

    def walk(node) -> None:
        if isinstance(node, dict):
            if "file" in node:
                pages.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return [os.path.splitext(p)[0] for p in pages]


def width_patterns(spec: str | None = None) -> list[str]:
    """The globs of pages whose width rules are enforced: ``spec``, else the environment variable
    ``DDPM_BOOK_ENFORCE_WIDTH``, else DEFAULT_ENFORCE_WIDTH. ``all`` means every page, ``none``
    none."""
    spec = spec if spec is not None else os.environ.get("DDPM_BOOK_ENFORCE_WIDTH", DEFAULT_ENFORCE_WIDTH)
    spec = spec.strip()
    if spec in ("all", "*"):
        return ["*"]
    if spec in ("", "none"):
        return []
    return [p.strip() for p in spec.split(",") if p.strip()]


def page_name(path: Path, html_dir: Path) -> str:
    """A built page's toc-style name: ``notebooks/02_posterior`` for ``<html>/notebooks/02_posterior.html``."""
    path = Path(path).resolve()
    try:
        rel = path.relative_to(Path(html_dir).resolve())
    except ValueError:
        rel = Path(path.name)
    return rel.with_suffix("").as_posix()


def width_enforced(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def check_pages(paths: list[Path], executable: str = CHROMIUM, html_dir: Path = Path("_build/html"),
                enforce: list[str] | None = None, axe: bool = True) -> list[PageReport]:
    """Check each HTML file in one browser session (width rules enforced on ``enforce`` globs)."""
    enforce = width_patterns() if enforce is None else enforce
    with Chromium(executable) as browser:
        return [browser.check_page(p, enforce_width=width_enforced(page_name(p, html_dir), enforce), axe=axe)
                for p in paths]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pages", nargs="*", type=Path, help="HTML files (default: all toc pages and the search page)")
    ap.add_argument("--html-dir", type=Path, default=Path("_build/html"))
    ap.add_argument("--toc", type=Path, default=Path("_toc.yml"))
    ap.add_argument("--chromium", default=CHROMIUM)
    ap.add_argument("--enforce-width", default=None, metavar="GLOBS",
                    help="pages whose width rules fail the check: comma-separated globs over toc names "
                         "(book/*, notebooks/02_*), 'all' or 'none' (default: $DDPM_BOOK_ENFORCE_WIDTH, "
                         f"else {DEFAULT_ENFORCE_WIDTH})")
    ap.add_argument("--width-report", type=Path, default=None, metavar="FILE",
                    help="write every width offender of every page (enforced or not) to FILE as JSON")
    ap.add_argument("--no-axe", action="store_true", help="skip the axe-core accessibility audit")
    args = ap.parse_args(argv)
    paths = args.pages or [args.html_dir / f"{p}.html" for p in [*toc_pages(args.toc), "search"]]
    enforce = width_patterns(args.enforce_width)
    start = time.monotonic()
    reports = check_pages(paths, args.chromium, args.html_dir, enforce, axe=not args.no_axe)
    bad = 0
    offenders = {}
    for r in reports:
        name = page_name(r.path, args.html_dir)
        status = "ok  " if r.ok else "FAIL"
        enforced = width_enforced(name, enforce)
        print(f"{status} {r.path} ({r.n_typeset} typeset math, {r.n_images} images, "
              f"{len(r.width)} width offenders{'' if enforced else ' (not enforced)'}, {r.seconds:.1f} s)")
        for p in r.problems:
            print(f"       {p}")
        if not enforced:
            for o in r.width:
                print(f"       note: does not fit: {o}")
        for html in r.missing_alt:
            print(f"       note: image without alt text: {html[:120]}")
        offenders[name] = [vars(o) for o in r.width]
        bad += not r.ok
    if args.width_report:
        args.width_report.parent.mkdir(parents=True, exist_ok=True)
        args.width_report.write_text(json.dumps(offenders, indent=1, ensure_ascii=False) + "\n", encoding="utf8")
        print(f"width offenders written to {args.width_report}")
    total = sum(len(v) for v in offenders.values())
    print(f"{total} width offenders on {sum(1 for v in offenders.values() if v)} pages "
          f"(enforced on: {','.join(enforce) or 'none'})")
    print(f"{len(reports) - bad} passed, {bad} failed ({time.monotonic() - start:.1f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
