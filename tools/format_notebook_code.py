"""Reformat the code cells of chapter notebooks to a line width, without touching their outputs.

The book's content column fits about 122 columns of code at a 1280-pixel window (checked by
``tools/check_book_html.py``), so chapter code is kept to ``--width 120`` (the repository's ruff
line length). This tool runs ``ruff format`` (the version pinned in requirements.txt; it formats
notebooks cell by cell) on a temporary copy of each notebook, then takes ONLY the new sources
of the code cells from it: outputs, execution counts, cell ids and metadata, markdown cells and
the notebook's metadata are copied from the original, and the file is written in the format the
notebooks use (``json.dump(nb, f, indent=1, ensure_ascii=False)`` plus a newline). A cell whose
source did not change is left byte for byte. Quote style is preserved.

Formatting only moves code across lines (ruff's formatter does not change what the code
computes), so stored outputs stay valid; still, re-run the notebook's checks afterwards
(``make check-notebooks``, strict nbval on it). Lines ruff cannot shorten (long strings,
comments) are listed: break them by hand.

Usage::

    python tools/format_notebook_code.py --width 120 notebooks/02_posterior.ipynb   # rewrite
    python tools/format_notebook_code.py --check notebooks/*.ipynb                 # report only
    python tools/format_notebook_code.py --all-cells --width 120 notebooks/NN_x.ipynb  # every cell

Exit status: 0 when nothing (more) needs doing, 1 with ``--check`` when a cell would change or a
line stays longer than the width, 2 on a usage or ruff error.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_WIDTH = 120


def _ruff() -> str:
    here = Path(sys.executable).parent / "ruff"
    found = str(here) if here.is_file() else shutil.which("ruff")
    if not found:
        raise RuntimeError("ruff is not installed (it is in requirements.txt: make venv)")
    return found


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _as_lines(text: str) -> list[str]:
    """A source string in the notebook's list-of-lines form."""
    return text.splitlines(keepends=True)


def format_notebook(path: Path, width: int = DEFAULT_WIDTH, all_cells: bool = False) -> tuple[dict, dict, list[int]]:
    """Return ``(original, formatted, changed_cell_indices)``; nothing is written.

    Only cells with a line longer than ``width`` take ruff's version, unless ``all_cells``
    (small diffs: cells that already fit keep their author's layout)."""
    original = json.loads(Path(path).read_text(encoding="utf8"))
    with tempfile.TemporaryDirectory(prefix="ddpm-format-") as tmp:
        copy_path = Path(tmp) / Path(path).name
        shutil.copyfile(path, copy_path)
        run = subprocess.run(
            [_ruff(), "format", "--no-cache", "--isolated", "--line-length", str(width),
             "--config", "format.quote-style='preserve'", str(copy_path)],
            capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"ruff format failed on {path}: {run.stderr.strip() or run.stdout.strip()}")
        ruffed = json.loads(copy_path.read_text(encoding="utf8"))
    cells_a, cells_b = original.get("cells", []), ruffed.get("cells", [])
    if len(cells_a) != len(cells_b):
        raise RuntimeError(f"{path}: ruff changed the number of cells ({len(cells_a)} -> {len(cells_b)})")
    formatted = copy.deepcopy(original)
    changed = []
    for i, (a, b) in enumerate(zip(cells_a, cells_b, strict=True)):
        if a.get("cell_type") != "code":
            continue
        old, new = _source(a), _source(b)
        if not all_cells and all(len(line) <= width for line in old.splitlines()):
            continue
        if old.endswith("\n") is False and new.endswith("\n") and new[:-1] == old:
            new = old  # ruff's trailing newline: not a change a reader sees
        if new.rstrip("\n") == old.rstrip("\n"):
            continue
        if not old.endswith("\n"):
            new = new.rstrip("\n")  # keep the cell's own convention (no final newline)
        formatted["cells"][i]["source"] = _as_lines(new) if isinstance(a.get("source"), list) else new
        changed.append(i)
    return original, formatted, changed


def long_lines(nb: dict, width: int) -> list[tuple[int, int, str]]:
    """``(cell index, line length, line)`` for every code line longer than ``width``."""
    out = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        for line in _source(cell).splitlines():
            if len(line) > width:
                out.append((i, len(line), line))
    return out


def write_notebook(nb: dict, path: Path) -> None:
    with open(path, "w", encoding="utf8") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--width", type=int, default=DEFAULT_WIDTH, help=f"line width (default {DEFAULT_WIDTH})")
    ap.add_argument("--check", action="store_true", help="report what would change; write nothing")
    ap.add_argument("--all-cells", action="store_true",
                    help="reformat every code cell (default: only cells with a line longer than the width)")
    args = ap.parse_args(argv)
    todo = 0
    for path in args.notebooks:
        if not path.is_file() or path.suffix != ".ipynb":
            print(f"error: {path}: not a notebook file; pass .ipynb files", file=sys.stderr)
            return 2
        try:
            original, formatted, changed = format_notebook(path, args.width, args.all_cells)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for key in ("outputs", "execution_count", "metadata", "id"):  # belt and braces
            for a, b in zip(original["cells"], formatted["cells"], strict=True):
                assert a.get(key) == b.get(key), f"{path}: {key} changed"
        still = long_lines(formatted, args.width)
        verb = "would reformat" if args.check else "reformatted"
        print(f"{path}: {verb} {len(changed)} code cell(s) {changed}; "
              f"{len(still)} line(s) still longer than {args.width}")
        for i, n, line in still:
            print(f"    cell {i}: {n} chars: {line.strip()[:100]}")
        if args.check:
            todo += bool(changed) or bool(still)
        elif changed:
            write_notebook(formatted, path)
    return 1 if todo else 0


if __name__ == "__main__":
    sys.exit(main())
