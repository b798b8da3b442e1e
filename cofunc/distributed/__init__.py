"""The stream runner on a Ray cluster: shards, stream affinity, migration, recovery, ingress.

Needs the ``ray`` extra (``pip install 'cofunc-torch[ray]'``); ``import cofunc`` never imports
Ray. `RayStreamRunner` has `cofunc.StreamRunner`'s interface; `DirectoryStore` keeps the
shards' checkpoints; `cofunc.distributed.ingress` serves streams over HTTP and WebSocket.
"""

from ._client import RayStreamRunner
from ._shard import Shard
from ._store import DirectoryStore

__all__ = ["RayStreamRunner", "Shard", "DirectoryStore"]
