"""Redis: connections, key names, Lua scripts and the challenge event channel.

Nothing above this package builds a key name or sends a raw command that changes state: state changes
are the scripts in `scripts.py`, each touching keys of one hash tag so they work on Redis Cluster.
"""

from pushauth.store.connection import STORE_DOWN_ERRORS, open_redis
from pushauth.store.keyspace import KeySpace

__all__ = ["STORE_DOWN_ERRORS", "KeySpace", "open_redis"]
