"""The lock of the on-disk embedding cache: :class:`CacheLock` and :class:`CacheBusyError`.

A lock file ``<cache>/embeddings/.lock`` keeps writing and deleting apart (``fcntl.flock``):
writers hold it shared (:meth:`~.disk_cache.DiskEmbeddingStore.put` while it writes one
slice; :class:`~.volume_embedding.VolumeEmbedder` for a whole run), and
:func:`~.disk_cache.clear_cache` and :func:`~.disk_cache.prune` take it exclusively without
waiting for a run: :func:`~.disk_cache.clear_cache` raises :class:`CacheBusyError`,
:func:`~.disk_cache.prune` skips. Where ``fcntl`` does not exist (Windows) there is no lock:
a clear while another process writes may remove slices that process has just written (they
are embedded again when next needed). See :mod:`.disk_cache` for the rest of the cache.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

try:  # POSIX
    import fcntl
except ImportError:  # Windows: no lock (see the module docstring)
    fcntl = None

logger = logging.getLogger(__name__)

#: The lock file in the embeddings root (see :class:`CacheLock`).
LOCK = ".lock"
#: Seconds a writer waits for a clear or prune by another process to finish.
WRITE_LOCK_TIMEOUT = 30.0


class CacheBusyError(OSError):
    """The embedding cache is locked by another process (see :class:`CacheLock`)."""


class CacheLock:
    """A shared (writer) or exclusive (clear, prune) lock on an embeddings root.

    ``fcntl.flock`` on ``<root>/.lock``; any number of shared holders, or one exclusive
    holder. Locks belong to an open file, so two threads of one process exclude each other
    like two processes. Without ``fcntl`` (Windows) acquiring always succeeds and locks
    nothing; on a file system without ``flock`` support it does the same (with a debug log).

    Parameters
    ----------
    root
        The embeddings root (created when missing).
    exclusive
        Exclusive (clearing, pruning) rather than shared (writing).
    timeout
        Seconds to keep trying before :meth:`acquire` raises :class:`CacheBusyError`
        (0: one try; None: :data:`WRITE_LOCK_TIMEOUT`).
    """

    def __init__(self, root: Path, *, exclusive: bool = False,
                 timeout: float | None = None) -> None:
        self.root = Path(root)
        self.exclusive = exclusive
        self.timeout = float(WRITE_LOCK_TIMEOUT if timeout is None else timeout)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (always False without ``fcntl``)."""
        return self._fd is not None

    def busy_message(self) -> str:
        if self.exclusive:
            return (f"another napari-medsam process is writing embeddings in {self.root}; "
                    "try again when it has finished")
        return (f"another napari-medsam process is clearing the embeddings in {self.root}; "
                f"gave up after {self.timeout:g} s")

    def acquire(self) -> CacheLock:
        """Take the lock (see the class docstring); raises :class:`CacheBusyError`."""
        if fcntl is None or self._fd is not None:
            return self
        path = self.root / LOCK
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + self.timeout
        while True:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise CacheBusyError(self.busy_message()) from None
                time.sleep(0.02)
                continue
            except OSError as exc:  # e.g. a network file system without flock
                os.close(fd)
                logger.debug("no lock on %s: %s", path, exc)
                return self
            try:  # the file locked must still be the lock file (not one removed meanwhile)
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return self
            os.close(fd)

    def release(self) -> None:
        """Let the lock go (closing the file releases it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> CacheLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()
