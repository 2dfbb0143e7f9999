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
  scripts threw no uncaught exception.

The browser is driven through the Chrome DevTools Protocol over ``--remote-debugging-pipe``
(file descriptors 3 and 4), so nothing beyond the standard library and the Debian package is
needed: no WebDriver, no browser download.

Usage::

    python tools/check_book_html.py            # all toc pages under _build/html
    python tools/check_book_html.py --html-dir _build/html --toc _toc.yml
    python tools/check_book_html.py page.html other.html   # explicit files

Exit status 0 when every page passes, 1 otherwise (each problem is printed).
"""

from __future__ import annotations

import argparse
import fcntl
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
    brokenImages,
  };
})()
"""


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
    def check_page(self, path: Path, timeout: float = 30.0) -> PageReport:
        """Load one HTML file and report what is wrong with it (see the module docstring)."""
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
            nav = self.send("Page.navigate", {"url": path.as_uri()}, session=session)
            if nav.get("errorText"):
                report.problems.append(f"navigation failed: {nav['errorText']}")
                return report
            self.wait_event("Page.loadEventFired", session, timeout=timeout)
            result = self.send(
                "Runtime.evaluate",
                {
                    "expression": PAGE_PROBE_JS % {"timeout_ms": int(timeout * 1000)},
                    "awaitPromise": True,
                    "returnByValue": True,
                },
                session=session,
                timeout=timeout + 10,
            )
            if "exceptionDetails" in result:
                report.problems.append(f"page probe failed: {result['exceptionDetails']}")
                return report
            found = result["result"]["value"]
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
            for href in sorted(set(found["localLinks"])):
                linked = Path(unquote(urlsplit(href).path))
                if not linked.exists():
                    report.problems.append(f"link to a missing file: {href}")
            report.problems.extend(self._failed_requests_and_exceptions(session))
        finally:
            self.send("Target.closeTarget", {"targetId": target})
            report.seconds = time.monotonic() - start
        return report

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


def check_pages(paths: list[Path], executable: str = CHROMIUM) -> list[PageReport]:
    """Check each HTML file in one browser session."""
    with Chromium(executable) as browser:
        return [browser.check_page(p) for p in paths]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pages", nargs="*", type=Path, help="HTML files (default: all toc pages)")
    ap.add_argument("--html-dir", type=Path, default=Path("_build/html"))
    ap.add_argument("--toc", type=Path, default=Path("_toc.yml"))
    ap.add_argument("--chromium", default=CHROMIUM)
    args = ap.parse_args(argv)
    paths = args.pages or [args.html_dir / f"{p}.html" for p in toc_pages(args.toc)]
    start = time.monotonic()
    reports = check_pages(paths, args.chromium)
    bad = 0
    for r in reports:
        status = "ok  " if r.ok else "FAIL"
        print(f"{status} {r.path} ({r.n_typeset} typeset math, {r.n_images} images, "
              f"{r.seconds:.1f} s)")
        for p in r.problems:
            print(f"       {p}")
        bad += not r.ok
    print(f"{len(reports) - bad} passed, {bad} failed ({time.monotonic() - start:.1f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
