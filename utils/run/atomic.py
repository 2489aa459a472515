"""Writing a file so that it is always whole or absent: :func:`replace_atomically`, used for every file this project
writes whole (checkpoints, ``summary.csv``, ``args.yaml``, ``results.json``, the report files); and appending to a
file only where it is the folder's own: :func:`append_text` (``log.txt``).

These two are the only ways the project writes into a run folder, and neither writes through a link: a rename
replaces a symbolic or hard link itself (the link's target, or the other names of the file, keep their content), and
an append goes only to a regular file with one link; a link is first replaced by a copy of what it points to
(:func:`detach`). So a ``log.txt`` that is a symlink, or a run folder copied with ``cp -al`` (every file a hard link
of the original's), never gets a byte written outside its own folder.

The temporary file (:func:`temporary_name`, ``<path>.tmp<pid><extension>``) lies beside the file, so that the rename
stays on one file system and is atomic; it is named after the writing process, so that two processes never write
the same one, and ends in the file's own extension, because some writers pick the format by it (matplotlib's
``savefig``). A kill can leave it behind; ``utils.run.run_folder.remove_temporaries`` removes those of a run folder.
"""
import errno
import os
import shutil
import stat
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


class NotAFileOfItsOwn(OSError):
    """A path to append to that is neither a regular file nor a link to one (a folder, a FIFO, a device)."""


def detach(path: str) -> None:
    """Make ``path`` a regular file of its own, with the content it shows now: a symbolic link to a regular file, or
    a regular file with other names (hard links), is replaced by a copy (through :func:`replace_atomically`); a
    dangling symbolic link by an empty file. Anything else is :class:`NotAFileOfItsOwn`."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.stat(path)
        except FileNotFoundError:  # dangling: nothing to keep
            replace_atomically(path, lambda tmp: open(tmp, 'w').close())
            return
        if not stat.S_ISREG(target.st_mode):
            raise NotAFileOfItsOwn(errno.EINVAL, f'a link to {os.path.realpath(path)}, which is not a regular file '
                                                 f'(remove the link)', path)
    elif not stat.S_ISREG(st.st_mode):
        raise NotAFileOfItsOwn(errno.EINVAL, 'not a regular file (remove it)', path)
    replace_atomically(path, lambda tmp: shutil.copyfile(path, tmp))


def append_text(path: str, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path``, created when missing, but only to a regular file with one link: a
    symbolic or hard link is first replaced by a copy (:func:`detach`), so the append never reaches another file."""
    for _ in range(2):
        if os.path.lexists(path):
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                detach(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:  # became a symlink since the look above
                continue
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # became a link since the look above
                continue
            data = text.encode('utf-8')
            while data:
                data = data[os.write(fd, data):]
            return
        finally:
            os.close(fd)
    raise NotAFileOfItsOwn(errno.EBUSY, 'it keeps being replaced by a link while this process appends to it', path)
