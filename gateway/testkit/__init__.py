"""Test kit: a deterministic test PKI and scenario builders that make signed DUIS/GBCS fixtures.

Used by ``duisgw demo``, ``tools/make_captures.py`` and the tests. Everything it makes is for tests
only: its keys are derived from public seeds.
"""
