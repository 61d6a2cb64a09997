"""The tracked look-alike table is what its generator makes from the pinned Unicode data (no hand edits, no
stale copy after the data package is upgraded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from service_kit.confusables_table import CONFUSABLE_LATIN

GENERATOR = Path(__file__).resolve().parents[2] / "scripts" / "generate_confusables.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_confusables", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tracked_table_matches_the_generator() -> None:
    generated = _generator().build()
    assert generated == CONFUSABLE_LATIN, (
        "service_kit/confusables_table.py is stale: regenerate it with "
        "`.venv/bin/python scripts/generate_confusables.py > service_kit/confusables_table.py`"
    )


def test_the_table_maps_well_known_look_alikes() -> None:
    assert CONFUSABLE_LATIN["\u0430"] == "a"  # CYRILLIC SMALL LETTER A
    assert CONFUSABLE_LATIN["\u03bf"] == "o"  # GREEK SMALL LETTER OMICRON
