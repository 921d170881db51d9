"""Atomic checkpoint files: a Lightning ``CheckpointIO`` that never leaves a half-written checkpoint."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Dict, Optional

import torch
from lightning.fabric.plugins import TorchCheckpointIO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, orphans are left alone
    fcntl = None

log = logging.getLogger(__name__)

# ".last.ckpt.<random>.tmp": hidden, and never matched by Lightning's "*.ckpt" listings
_TMP_GLOB = ".*.ckpt.*.tmp"


def _local(path: Any) -> Optional[Path]:
    """``path`` as a local Path, or None for a remote URL."""
    text = str(path).removeprefix("file://")
    return None if "://" in text else Path(text)


def _lock(f: IO[bytes], blocking: bool = True) -> bool:
    """An exclusive advisory lock on ``f``, held until it is closed or its process dies."""
    if fcntl is None:
        return not blocking
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def remove_orphans(folder: Path) -> list:
    """Delete the temporary files of checkpoint saves in ``folder`` that no process is writing.

    A writer holds a lock on its temporary file until the rename; a file nobody holds is left over
    from a save whose process was killed. Returns the removed paths.
    """
    removed = []
    for tmp in sorted(Path(folder).glob(_TMP_GLOB)):
        try:
            with open(tmp, "rb") as f:
                if _lock(f, blocking=False):
                    tmp.unlink()
                    removed.append(tmp)
        except FileNotFoundError:  # renamed or removed meanwhile
            continue
    if removed:
        log.info("removed %d unfinished checkpoint file(s) in %s", len(removed), folder)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves every checkpoint atomically on its own filesystem.

    The checkpoint is written to a temporary file in the checkpoint's own folder, flushed and
    fsynced, then renamed over the target with ``os.replace``, which is atomic within a
    filesystem: a kill at any moment leaves either the old file or the new one, complete.
    (Lightning's ``TorchCheckpointIO`` writes its temporary file in ``$TMPDIR`` and moves it; when
    that is another filesystem, a tmpfs or a node-local scratch disk, the move copies over the old
    checkpoint and a kill mid-copy destroys it.)

    Unfinished temporary files of killed saves (``.<name>.ckpt.<random>.tmp``) are removed from
    a folder before the first save into it and whenever a checkpoint is loaded from it. Remote
    paths (``s3://...``) go to Lightning's own implementation.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set = set()

    def save_checkpoint(
        self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None
    ) -> None:
        local = _local(path)
        if storage_options is not None or local is None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        path, folder = local, local.parent
        folder.mkdir(parents=True, exist_ok=True)
        if folder not in self._cleaned:
            remove_orphans(folder)
            self._cleaned.add(folder)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                _lock(f)
                self._write(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
                os.replace(tmp, path)  # still locked: no cleaner takes it for an orphan
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_folder(folder)  # the rename itself survives a power loss

    def _write(self, checkpoint: Dict[str, Any], f: IO[bytes]) -> None:
        """Serialize ``checkpoint`` into the open temporary file ``f``."""
        torch.save(checkpoint, f)

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        local = _local(path)
        if local is not None and local.parent.is_dir():
            remove_orphans(local.parent)
        return super().load_checkpoint(path, *args, **kwargs)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every OS or filesystem opens folders
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
