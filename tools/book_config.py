"""Write a copy of ``_config.yml`` that builds the book from the outputs stored in the notebooks.

``make book`` executes every notebook during the build (``execute_notebooks: force``).
``make test`` does not need that second execution: its strict ``pytest --nbval`` run already
re-executes every notebook and compares every output with the stored one, so it builds the
book from the stored outputs with the configuration this script writes:

    python tools/book_config.py _config.yml _build/_config.stored-outputs.yml
    jupyter-book build . --config _build/_config.stored-outputs.yml ...

Only ``execute.execute_notebooks`` changes (to ``"off"``); paths that Jupyter Book resolves
relative to the configuration file (``sphinx.local_extensions``) are made absolute so that the
copy can live under ``_build/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def stored_outputs_config(source: Path) -> dict:
    source = Path(source).resolve()
    config = yaml.safe_load(source.read_text(encoding="utf8"))
    if config.get("execute", {}).get("execute_notebooks") is None:
        raise ValueError(f"{source}: expected an execute.execute_notebooks setting")
    config["execute"]["execute_notebooks"] = "off"
    local = (config.get("sphinx") or {}).get("local_extensions") or {}
    for name, path in local.items():
        local[name] = str((source.parent / path).resolve())
    return config


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python tools/book_config.py SOURCE_CONFIG OUTPUT_CONFIG", file=sys.stderr)
        return 2
    config = stored_outputs_config(Path(args[0]))
    out = Path(args[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Generated from {args[0]} by tools/book_config.py: do not edit.\n"
    out.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
