"""Every SQL statement, by resource: tasks (tasks.py: a task's row and reading one;
creating.py, changing.py and deleting.py: its writes; placing.py: where one goes;
shortcuts.py: the two writes that need no lock first; listing.py: pages of tasks; bulk.py:
one action on many), lists, the sync feed's changes and the idempotency keys. How a write
runs (the user's row locked, then one statement) is in writes.py."""

from . import changes, changing, creating, deleting, keys, lists, tasks

__all__ = ["changes", "changing", "creating", "deleting", "keys", "lists", "tasks"]
