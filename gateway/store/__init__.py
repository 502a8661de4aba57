"""Durable state for the correlation engine: the ``StateStore`` interface, its SQLite default and
``DurableEngine`` (engine + store with group commit and crash recovery)."""

from __future__ import annotations

from gateway.store.base import StateStore
from gateway.store.durable import DurableEngine
from gateway.store.sqlite import SqliteStore

__all__ = ["DurableEngine", "SqliteStore", "StateStore"]
