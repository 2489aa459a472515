"""Writing a file so that it is always whole or absent: :func:`replace_atomically`, used for every file this project
writes whole (checkpoints, ``summary.csv``, ``args.yaml``, ``results.json``, the report files).

The temporary file (:func:`temporary_name`, ``<path>.tmp<pid><extension>``) lies beside the file, so that the rename
stays on one file system and is atomic; it is named after the writing process, so that two processes never write
the same one, and ends in the file's own extension, because some writers pick the format by it (matplotlib's
``savefig``). A kill can leave it behind; ``utils.run_folder.remove_temporaries`` removes those of a run folder.
"""
import os
from typing import Callable


def temporary_name(path: str) -> str:
    return f'{path}.tmp{os.getpid()}{os.path.splitext(path)[1]}'


def fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` writes the temporary file, which is flushed to disk and renamed over ``path``; the temporary
    file is removed whatever happens, so a failed write leaves ``path`` as it was (or absent) and nothing else."""
    tmp = temporary_name(path)
    try:
        if os.path.lexists(tmp):
            os.remove(tmp)
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_folder(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
