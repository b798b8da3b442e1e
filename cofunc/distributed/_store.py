"""Where shards keep their checkpoints: one file per shard in a directory.

A checkpoint is written to a temporary file and renamed over the previous one, so a shard that
dies while writing leaves the previous checkpoint intact: the store always holds a complete
checkpoint (the last or the one before). On several nodes the directory must be on a
filesystem every node mounts (NFS, a cloud bucket mounted with FUSE), since a stream may be
restored on another node than the one that saved it.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from .._errors import ConfigurationError


class DirectoryStore:
    """Checkpoints of shards as ``<path>/<shard>.safetensors`` (written by `StreamRunner.save`).

    Example:
        >>> import tempfile, torch, cofunc
        >>> from cofunc.distributed import DirectoryStore
        >>> store = DirectoryStore(tempfile.mkdtemp())
        >>> layer = cofunc.conv1d(2, 2, 2)
        >>> runner = cofunc.StreamRunner(layer, layer.init_params(), frame_shape=(2,))
        >>> runner.open("a")
        >>> store.save("shard-0", runner)
        >>> other = cofunc.StreamRunner(layer, runner.params, frame_shape=(2,))
        >>> store.load("shard-0", other), other.ids
        (True, ['a'])
    """

    def __init__(self, path):
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigurationError(f"DirectoryStore: expected a directory path, got {type(path).__name__}")
        self.path = os.path.abspath(os.fspath(path))
        os.makedirs(self.path, exist_ok=True)

    def __repr__(self) -> str:
        return f"DirectoryStore({self.path!r})"

    def file(self, shard: str) -> str:
        return os.path.join(self.path, f"{shard}.safetensors")

    def save(self, shard: str, runner, _before_rename: Optional[Callable[[], None]] = None) -> None:
        """Write ``runner``'s checkpoint for ``shard``, replacing the previous one atomically."""
        final = self.file(shard)
        tmp = f"{final}.tmp-{os.getpid()}"
        runner.save(tmp, format="safetensors")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if _before_rename is not None:
            _before_rename()  # fault injection: a shard dying between writing and renaming
        os.replace(tmp, final)

    def load(self, shard: str, runner) -> bool:
        """Restore ``runner`` from ``shard``'s checkpoint; False (runner untouched) if there is none."""
        final = self.file(shard)
        if not os.path.exists(final):
            return False
        runner.restore(final)
        return True

    def remove(self, shard: str) -> None:
        try:
            os.remove(self.file(shard))
        except FileNotFoundError:
            pass
