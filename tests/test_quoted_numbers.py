"""Numbers the prose pages attribute to the paper must be the ones recorded in ddpm_ref.paper.

Prose pages cannot compute, so every decimal number on them must be a quotation: this test
collects every value in ddpm_ref.paper and fails on any decimal number in those pages that is not
among them (a typo, or a number typed in by hand that a notebook should compute instead).
"""

import dataclasses
import re
from pathlib import Path

import pytest

from ddpm_ref import paper

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["book/reading_the_paper.md", "book/glossary.md"]


def paper_values() -> set[float]:
    vals: set[float] = set()

    def add(v):
        if isinstance(v, bool):
            return
        if isinstance(v, (int, float)):
            vals.add(round(float(v), 6))
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            for f in dataclasses.fields(v):
                add(getattr(v, f.name))
        elif isinstance(v, (tuple, list)):
            for x in v:
                add(x)
        elif isinstance(v, dict):
            for x in v.values():
                add(x)

    for name in dir(paper):
        if not name.startswith("_"):
            add(getattr(paper, name))
    return vals


@pytest.mark.parametrize("page", PAGES)
def test_decimal_numbers_on_prose_pages_are_quotations(page):
    text = (ROOT / page).read_text()
    text = re.sub(r"\$[^$]*\$", " ", text)  # formulas are symbols, not quoted results
    text = re.sub(r"Sections?\s+[\d.]+(?:\s*(?:and|,|-)\s*[\d.]+)*", " ", text)  # section numbers
    known = paper_values()
    found = [float(m) for m in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", text)]
    assert found, f"{page}: no numbers found (the test would pass vacuously)"
    unknown = sorted({v for v in found if round(v, 6) not in known})
    assert not unknown, f"{page}: numbers not recorded in ddpm_ref.paper: {unknown}"
