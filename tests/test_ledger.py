"""The equation ledger: every tag names a registry row, every check asserts, every row is checked.

The rows are ``ddpm_ref.paper.LEDGER``; the cells join them through their tags (README, "Writing
a chapter notebook"). ``book/_ext/equation_ledger.py`` renders the page from the same scan.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from ddpm_ref.paper import LEDGER, LEDGER_KINDS

ROOT = Path(__file__).resolve().parents[1]


def _ledger_module():
    spec = importlib.util.spec_from_file_location("equation_ledger", ROOT / "book" / "_ext" / "equation_ledger.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("equation_ledger", mod)
    spec.loader.exec_module(mod)
    return mod


ledger = _ledger_module()


def test_kinds_agree_with_the_extension():
    assert tuple(ledger.KINDS) == tuple(LEDGER_KINDS)


def test_registry_keys_are_well_formed():
    for key, entry in LEDGER.items():
        assert key == entry.key and key.startswith(ledger.KEY_PREFIXES), key
        assert entry.title and entry.label


def test_every_tag_is_valid_and_every_check_asserts():
    _, problems = ledger.scan(ROOT)
    assert not problems, "\n".join(problems)


def test_every_row_is_derived_and_checked_symbolically_and_numerically():
    cells, _ = ledger.scan(ROOT)
    missing = []
    for key in LEDGER:
        kinds = {c.kind for c in cells if key in c.keys}
        need = {"derivation", "check-symbolic", "check-numerical"} - kinds
        if need:
            missing.append(f"{key}: no {', '.join(sorted(need))}")
    assert not missing, f"{len(missing)} ledger rows lack a derivation or a check:\n" + "\n".join(missing)


def _write_nb(path: Path, cells):
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def _code(src, tags):
    return {"cell_type": "code", "source": src, "metadata": {"tags": tags}, "outputs": [], "execution_count": 1}


def test_scan_reports_each_kind_of_problem(tmp_path):
    (tmp_path / "notebooks").mkdir()
    _write_nb(tmp_path / "notebooks" / "01_x.ipynb", [
        {"cell_type": "markdown", "source": "# Title\n## Sec", "metadata": {"tags": ["derivation", "eq-4"]}},
        _code("x = 1", ["check-numerical", "eq-4"]),  # no assertion
        _code("assert x == 1", ["check-symbolic", "eq-999"]),  # unknown key
        _code("assert x == 1", ["check-symbolic"]),  # no key
        _code("assert x == 1", ["eq-4"]),  # no kind
        {"cell_type": "markdown", "source": "text", "metadata": {"tags": ["check-symbolic", "eq-4"]}},
        _code("np.testing.assert_allclose(a, b)", ["check-numerical", "eq-4"]),  # fine
    ])
    cells, problems = ledger.scan(tmp_path)
    text = "\n".join(problems)
    assert "cell 1: a check-numerical cell must assert" in text
    assert "cell 2: tag 'eq-999'" in text
    assert "cell 3: kind 'check-symbolic' without a row key" in text
    assert "cell 4: needs exactly one kind tag" in text
    assert "cell 5: a check-symbolic cell must be a code cell" in text
    assert len(problems) == 5, text
    assert [(c.index, c.kind, c.section) for c in cells] == [
        (0, "derivation", "Title"), (1, "check-numerical", "Sec"), (2, "check-symbolic", "Sec"),
        (5, "check-symbolic", "Sec"), (6, "check-numerical", "Sec")]
    assert cells[2].keys == ()  # the unknown key is reported, not kept


def test_headings_inside_fences_are_not_sections():
    src = "## Real\n```python\n# not a heading\n```\n:::{note}\n# nor this\n:::\n### Also real"
    assert ledger._headings(src) == ["Real", "Also real"]


@pytest.mark.parametrize(("doc", "keys"), [
    ("Eq. 4 in closed form.", {"eq-4"}),
    ("The posterior (eqs. 6-7) and eq. 10, 12.", {"eq-6", "eq-7", "eq-10", "eq-12"}),
    ("Algorithm 2 of the paper.", {"alg-2"}),
    ("The DDIM update (Song, Meng & Ermon 2021, eq. 12).", {"ext-ddim-step"}),
    ("Kingma et al. (2021), eq. 13.", {"ext-snr-bound"}),
    ("No citation here; eq. 99 is not a row.", set()),
])
def test_docstring_citations(doc, keys):
    assert ledger.cited_keys(doc, LEDGER) == keys


def test_implementing_functions_finds_the_forward_process():
    impl = ledger.implementing_functions(LEDGER)
    assert any(f.endswith("q_sample") for f in impl.get("eq-4", [])), impl.get("eq-4")
