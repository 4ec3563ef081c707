"""Safe output files: atomic writes, temporaries, cleanup of outputs in progress, write probes.

Every output is written atomically: to a temporary name in the destination directory, then
``os.replace``-d onto the final path at commit, so a crash never leaves a half-written file
behind. Temporaries are named ``.BASE.pidPID.XXXX.tmpSUFFIX``, so those a killed run (SIGKILL,
power loss) left behind are recognised and removed by the next write of the same path. An
existing directory is never deleted or replaced, and a file is never written over a directory.

Outputs in progress register a cleanup (``track``); ``emergency_cleanup`` runs them all when the
process must exit without unwinding. Video outputs (:mod:`gvc_jax.io.video_writer`) are built on
these pieces.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from gvc_jax.pixels import VideoError

# Cleanups of outputs in progress (temporaries, ffmpeg children), for ``emergency_cleanup``.
_ACTIVE: dict = {}
_NEXT_TOKEN = [0]


def track(cleanup) -> int:
    """Register ``cleanup()`` of an output in progress for ``emergency_cleanup``; -> its token."""
    _NEXT_TOKEN[0] += 1
    _ACTIVE[_NEXT_TOKEN[0]] = cleanup
    return _NEXT_TOKEN[0]


def untrack(token) -> None:
    """Forget the cleanup of ``token`` (the output was committed or removed); ``None`` is ignored."""
    _ACTIVE.pop(token, None)


def emergency_cleanup() -> None:
    """Remove every output still in progress (called when the main thread cannot unwind in time,
    e.g. a signal arrived while it waits inside XLA). Never raises."""
    for cleanup in list(_ACTIVE.values()):
        try:
            cleanup()
        except BaseException:  # noqa: BLE001 - best effort on the way out
            pass
    _ACTIVE.clear()


def remove_path(path: str) -> None:
    """Remove a file or a directory tree at ``path`` if there is one; never raises for a missing path."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(path: str) -> list:
    """Remove the temporaries a killed run (SIGKILL, power loss) left next to ``path``.

    Temporaries are named ``.BASE.pidPID.XXXX.tmpSUFFIX``; one whose process no longer exists is
    stale. Those of live processes, and every other file, are left alone. -> removed paths.
    """
    base = os.path.basename(path.rstrip(os.sep)) or "output"
    parent = parent_dir(path)
    prefix = f".{base}.pid"
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix) or ".tmp" not in name:
            continue
        pid_text = name[len(prefix):].split(".", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            remove_path(os.path.join(parent, name))
            removed.append(os.path.join(parent, name))
    return removed


def temp_path(path: str) -> str:
    """A fresh, not yet existing name next to ``path`` (hidden, same suffix, names this process);
    stale temporaries of ``path`` left by killed runs are removed first."""
    base = os.path.basename(path.rstrip(os.sep)) or "output"
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.pid{os.getpid()}.", suffix=f".tmp{Path(base).suffix}",
                               dir=parent_dir(path))
    os.close(fd)
    os.remove(tmp)  # the writer creates it (ffmpeg and directories want a fresh path)
    return tmp


def parent_dir(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _refuse_directory(path: str) -> None:
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; refusing to replace it")


def publish(tmp: str, path: str) -> None:
    """Rename ``tmp`` onto ``path``; never onto (or instead of) an existing directory."""
    _refuse_directory(path)
    if os.path.isdir(tmp) and os.path.lexists(path):
        raise FileExistsError(f"{path} exists; refusing to replace it with a directory")
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path) -> Iterator[str]:
    """Yield a temporary path next to ``path`` (same suffix); rename it onto ``path`` on success.

    The temporary path does not exist yet; the body creates it (a file, or a directory when
    ``path`` does not exist). On an exception it is removed and ``path`` is left untouched. An
    existing directory at ``path`` is never replaced: ``IsADirectoryError`` before any work. The
    parent directory is created if missing.
    """
    path = os.fspath(path)
    _refuse_directory(path)
    os.makedirs(parent_dir(path), exist_ok=True)
    tmp = temp_path(path)
    token = track(lambda: remove_path(tmp))
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise VideoError(f"nothing was written for {path}")
        publish(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise
    finally:
        untrack(token)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())



def probe_writable(directory: str) -> None:
    """Really create (and remove) a file in ``directory``, named like this process's temporaries:
    a permission check alone passes where creating fails (``/proc``, read-only mounts, root)."""
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"output directory {directory} is not writable")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".probe.pid{os.getpid()}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise PermissionError(f"cannot create files in output directory {directory}: "
                              f"{err.strerror or err}") from None
    os.close(fd)
    os.remove(tmp)
