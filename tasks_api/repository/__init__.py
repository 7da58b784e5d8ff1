"""Every SQL statement, by resource: tasks, lists, the sync feed's changes and the
idempotency keys. How a write runs (the user's row locked, then one statement) is in
writes.py."""

from . import changes, keys, lists, tasks

__all__ = ["changes", "keys", "lists", "tasks"]
