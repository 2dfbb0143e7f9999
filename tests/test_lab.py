"""JupyterLab renders the chapters' MyST markup: the jupyterlab-myst extension is installed and enabled.

Without it, JupyterLab (which the README recommends for reading the notebooks) shows ``{cite}``,
``{numref}`` and directives as raw text. ``jupyter labextension list`` marks an extension ``OK``
only if it is compatible with the installed JupyterLab (jupyterlab-myst 2.7.0 needs the
``@jupyter/ydoc`` 3 that JupyterLab 4.5 bundles; JupyterLab 4.6 lists it as ``enabled X``, not
loaded).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


def test_jupyterlab_myst_is_installed_enabled_and_compatible():
    jupyter = Path(sys.executable).with_name("jupyter")
    if not jupyter.is_file():
        pytest.skip(f"no jupyter next to {sys.executable}")
    proc = subprocess.run([str(jupyter), "labextension", "list"], capture_output=True, text=True, timeout=120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)  # drop colour codes
    line = next((ln for ln in text.splitlines() if "jupyterlab-myst" in ln and " v" in ln), None)
    assert line is not None, f"jupyterlab-myst is not installed in this environment:\n{text}"
    assert "enabled" in line.split() and "OK" in line.split(), line
    assert "is not compatible" not in text, text
    pinned = [ln for ln in (Path(__file__).resolve().parents[1] / "requirements.txt").read_text().splitlines()
              if ln.startswith("jupyterlab-myst==")]
    assert pinned and pinned[0].split("==")[1] in line, (pinned, line)
