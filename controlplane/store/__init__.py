"""Durable state behind one interface (`Store`), with SQLite as the default backend."""

from controlplane.store.base import CodespecPage, Store

__all__ = ["CodespecPage", "Store"]
