"""Fixtures for the DUIS codec tests: the official DUIS 5.4 XSD (from ../shared) and the compact one."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.duis.schema import DuisSchema, load_compact, load_official

OFFICIAL_XSD = "DUIS Schema V5.4.xsd"


@pytest.fixture(scope="session")
def official_schema(shared: Path) -> DuisSchema:
    return load_official(shared / "duis" / "schemas" / OFFICIAL_XSD)


@pytest.fixture(scope="session")
def compact_schema() -> DuisSchema:
    return load_compact()
