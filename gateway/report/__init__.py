"""Readable reports of replay runs (self-contained HTML)."""
