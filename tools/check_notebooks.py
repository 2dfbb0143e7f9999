"""Check that the chapter notebooks are stored executed, error-free and listed in the toc.

``pytest --nbval`` compares the outputs stored in a notebook with a fresh run; a cell that was
never executed has nothing to compare, so a notebook saved without outputs would pass
vacuously, and the book built from stored outputs would show no results. This script closes
that gap. For every ``notebooks/*.ipynb`` it fails when

* a code cell with non-empty source has no ``execution_count`` (never executed);
* the execution counts of the code cells are not 1, 2, 3, ... in order (the stored outputs
  must come from one clean top-to-bottom run, e.g.
  ``jupyter nbconvert --to notebook --execute --inplace notebooks/NN_topic.ipynb``);
* a cell stored an error output, unless the cell is tagged ``raises-exception`` (a cell that
  is meant to fail: nbval and the book build accept the error there);
* the notebook does not declare the ``python3`` kernel (the one the book build and JupyterLab
  start from the project's ``.venv``), or is not a valid nbformat 4 notebook;
* the notebook is not listed in ``_toc.yml``.

It also fails for every ``_toc.yml`` entry whose file does not exist.

Usage: ``python tools/check_notebooks.py [--toc _toc.yml] [notebooks]``; exit status 1 with
one line per problem, 0 when everything passes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KERNEL_NAME = "python3"
SUFFIXES = (".ipynb", ".md")


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def check_notebook(path: Path) -> list[str]:
    """Problems with one stored notebook (empty list when it passes)."""
    path = Path(path)
    try:
        nb = json.loads(path.read_text(encoding="utf8"))
    except (OSError, ValueError) as exc:
        return [f"{path}: cannot be read as JSON ({exc})"]
    problems: list[str] = []
    if nb.get("nbformat") != 4:
        problems.append(f"{path}: nbformat {nb.get('nbformat')!r}, expected 4")
    try:
        import nbformat

        nbformat.validate(nbformat.from_dict(nb))
    except ImportError:  # pragma: no cover - nbformat comes with jupyter
        pass
    except Exception as exc:  # nbformat.ValidationError and friends
        problems.append(f"{path}: not a valid notebook: {str(exc).splitlines()[0]}")

    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name")
    if kernel != KERNEL_NAME:
        problems.append(
            f"{path}: metadata.kernelspec.name is {kernel!r}, expected {KERNEL_NAME!r}"
        )

    expected_count = 1
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        where = f"{path}: code cell {index}"
        count = cell.get("execution_count")
        outputs = cell.get("outputs", [])
        if not _source(cell).strip():
            if outputs:
                problems.append(f"{where} is empty but has stored outputs")
            continue
        if count is None:
            problems.append(
                f"{where} was never executed (no execution_count, no stored output): "
                "run the notebook top to bottom and save it with its outputs"
            )
        elif count != expected_count:
            problems.append(
                f"{where} has execution_count {count}, expected {expected_count}: outputs must "
                "come from one clean top-to-bottom run (restart the kernel and run all)"
            )
            expected_count = count + 1
        else:
            expected_count += 1
        tags = cell.get("metadata", {}).get("tags", [])
        for out in outputs:
            if out.get("output_type") == "error" and "raises-exception" not in tags:
                problems.append(
                    f"{where} stored an error: {out.get('ename')}: {out.get('evalue')}"
                )
    return problems


def toc_files(toc_path: Path) -> list[str]:
    """All ``root`` and ``file`` entries of a Jupyter Book toc, as written there."""
    import yaml

    toc = yaml.safe_load(Path(toc_path).read_text(encoding="utf8")) or {}
    files: list[str] = []
    if "root" in toc:
        files.append(str(toc["root"]))

    def walk(node) -> None:
        if isinstance(node, dict):
            if "file" in node:
                files.append(str(node["file"]))
            for key, value in node.items():
                if key != "root":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return files


def _resolve(entry: str, root: Path) -> Path | None:
    base = root / entry
    if base.suffix in SUFFIXES and base.is_file():
        return base
    for suffix in SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def check_toc(toc_path: Path, notebooks_dir: Path) -> list[str]:
    """Toc entries without a file, and notebooks that the toc does not list."""
    toc_path = Path(toc_path)
    root = toc_path.parent
    problems = []
    listed: set[Path] = set()
    for entry in toc_files(toc_path):
        found = _resolve(entry, root)
        if found is None:
            problems.append(
                f"{toc_path}: entry {entry!r} has no file ({' or '.join(entry + s for s in SUFFIXES)})"
            )
        else:
            listed.add(found.resolve())
    for nb in sorted(Path(notebooks_dir).glob("*.ipynb")):
        if nb.resolve() not in listed:
            problems.append(f"{nb}: not listed in {toc_path} (add it, or move it out of {notebooks_dir})")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="?", type=Path, default=Path("notebooks"))
    ap.add_argument("--toc", type=Path, default=Path("_toc.yml"))
    args = ap.parse_args(argv)
    notebooks = sorted(args.notebooks.glob("*.ipynb"))
    problems = check_toc(args.toc, args.notebooks)
    for nb in notebooks:
        problems += check_notebook(nb)
    for p in problems:
        print(p)
    n_bad = len({p.split(":", 1)[0] for p in problems})
    print(
        f"check_notebooks: {len(notebooks)} notebooks, {len(problems)} problems"
        + (f" in {n_bad} files" if problems else "")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
