"""Persistence layer: the Store protocol, its three implementations and the group-commit Journal."""

from mainspring.persistence.memory import MemoryStore as MemoryStore
from mainspring.persistence.postgres import PostgresStore as PostgresStore
from mainspring.persistence.sqlite import SqliteStore as SqliteStore
from mainspring.persistence.store import AppendRequest as AppendRequest
from mainspring.persistence.store import Store as Store

__all__ = ["AppendRequest", "MemoryStore", "PostgresStore", "SqliteStore", "Store"]
