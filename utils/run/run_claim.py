"""One run per folder, enforced by the kernel: a training run claims its folder before it writes into it, and unique
default folder names.

The claim is an exclusive ``fcntl.flock`` on ``<folder>/.run.lock``, taken by rank 0 before anything is written and
held until the run ends. Why a lock and not an exclusive create alone: the kernel releases a flock when its process
dies, however it dies, so a run killed with ``kill -9`` (or by the OOM killer, or a SLURM time limit) leaves no claim
that would block its own ``--resume``; the file may stay behind with the dead holder's pid in it, and the next claim
simply takes it. A second process that finds the lock held is refused with the holder's pid, host and start time, which
the holder wrote into the file.

Details that make it hold:

* the lock file is opened with ``O_NOFOLLOW`` and must be a regular file with one link: a symlink or a hard link
  (a ``cp -al`` copy of a run shares the original's lock file) is replaced by a fresh file first, so two copies of a
  run never share a claim and the holder line is never written outside the folder;
* after the lock is taken, the path must still name the locked file (another process may have released and removed
  it in between): otherwise the claim starts again. This is the usual lock-file protocol; it is what lets a claim
  remove its file when it ends, so a finished run folder holds no lock file;
* flock works on local disks and, on Linux, on NFS (emulated with POSIX byte-range locks since kernel 2.6.12). A file
  system without locks (Lustre mounted without ``-o flock``, some FUSE file systems) gets one warning and an
  unprotected run, rather than no run at all;
* a forked child (a DataLoader worker) closes its inherited copy of the descriptor at once
  (``os.register_at_fork``): a flock lasts while any copy is open, so otherwise a ``kill -9`` of the main process
  would leave the claim held until its workers noticed and exited.

A refused or failed start removes what the claim created (the lock file, and the folder when the claim created it and
it is empty again), so a start that fails writes nothing.

Default folder names (:func:`unique_suffix`, :func:`make_default_folder`): the time to the millisecond, the SLURM job
(and array task) when there is one, and a short random suffix, created with an exclusive ``mkdir`` so that two runs
started at the same instant never share a folder.
"""
import errno
import fcntl
import os
import secrets
import socket
import stat
import sys
import time
from typing import Callable, List, Optional

from utils.errors import UserError

LOCK_NAME = '.run.lock'
_MAX_TRIES = 20

_held: List['RunClaim'] = []  # the claims this process holds (released by release_claims)
_parents_made = {}  # default folder -> the missing parents make_default_folder created for it (output/, output/train/)
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)  # flock unsupported by the file system


class FolderInUse(UserError):
    """The run folder is claimed by a running process."""


class RunClaim:
    """This process's claim of ``folder`` (see the module docstring); ``created``: the claim made the folder."""

    def __init__(self, folder: str, fd: int, created: bool, locked: bool = True):
        self.folder, self.fd, self.created, self.locked = folder, fd, created, locked

    @property
    def path(self) -> str:
        return os.path.join(self.folder, LOCK_NAME)

    def release(self) -> None:
        """Remove the lock file (while still holding the lock, so no other claim can be lost), then release it;
        remove the folder too when the claim created it and nothing else was written into it."""
        if self.fd is None:
            return
        try:
            if self.locked and _names_file(self.path, os.fstat(self.fd)):
                os.remove(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        if self.created:
            _remove_if_empty(self.folder)


def _remove_if_empty(folder: str) -> None:
    """Remove ``folder`` when empty, then the parents :func:`make_default_folder` created for it (each when empty):
    a start that fails leaves no folder behind, nor an ``output/train/``."""
    for path in [folder] + _parents_made.pop(folder, []):
        try:
            os.rmdir(path)
        except OSError:
            return


def _forget_in_child() -> None:
    """After a fork, in the child: close the inherited lock descriptors (without removing the files), so that the
    claim ends with the process that made it."""
    for claim in _held:
        try:
            os.close(claim.fd)
        except OSError:
            pass
        claim.fd = None
    _held.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_in_child)


def holder_line() -> str:
    return (f'process {os.getpid()} on host {socket.gethostname()}, started '
            f'{time.strftime("%Y-%m-%d %H:%M:%S %Z")}')


def _names_file(path: str, st: os.stat_result) -> bool:
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _replace_with_fresh_file(path: str) -> None:
    """Put a new, empty regular file at ``path`` (replacing a symlink or a hard link there, not its target)."""
    tmp = f'{path}.{os.getpid()}.{secrets.token_hex(3)}'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    os.close(fd)
    try:
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def _read_holder(fd: int, wait: float = 0.0) -> str:
    """The holder line of a claimed lock file. The holder writes it just after it takes the lock, so a refusal in
    that instant may find the file still empty: it reads again for up to ``wait`` seconds before saying so."""
    deadline = time.monotonic() + wait
    while True:
        try:
            text = os.pread(fd, 400, 0).decode('utf-8', 'replace').strip()
        except OSError:
            text = ''
        if text or time.monotonic() >= deadline:
            return text or 'another process (it has not recorded its id yet)'
        time.sleep(0.02)


def claim_folder(folder: str, in_use: Callable[[str], str], create: bool = True, created: bool = False
                 ) -> RunClaim:
    """Claim ``folder`` for this process (created when missing and ``create``; ``created``: the caller has just
    made it, see :func:`make_default_folder`); :class:`FolderInUse` with ``in_use(holder)`` as its message when a
    running process holds it. The claim lasts until :func:`release_claims` (or the process's end)."""
    if create and not os.path.isdir(folder):
        try:
            os.makedirs(folder)
            created = True
        except FileExistsError:
            pass
    path = os.path.join(folder, LOCK_NAME)
    try:
        return _claim(folder, path, in_use, created)
    except BaseException as e:
        if created:  # leave nothing behind (rmdir removes only an empty folder: never one another run uses)
            _remove_if_empty(folder)
        if not isinstance(e, OSError):
            raise
        raise UserError(f'cannot claim the run folder {folder}: {path}: {e.strerror or e}.\nThe run keeps its claim '
                        f'of the folder in that file: remove what is in the way, or choose another folder.') from None


def _claim(folder: str, path: str, in_use: Callable[[str], str], created: bool) -> RunClaim:
    for _ in range(_MAX_TRIES):
        if os.path.isdir(path) and not os.path.islink(path):
            raise IsADirectoryError(21, 'it is a folder, not the lock file', path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if os.path.islink(path):  # O_NOFOLLOW refused a symlink: replace the link itself
                _replace_with_fresh_file(path)
                continue
            raise e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # e.g. shared with a `cp -al` copy
            os.close(fd)
            _replace_with_fresh_file(path)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd, wait=2.0)
            os.close(fd)
            raise FolderInUse(in_use(holder)) from None
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise
            sys.stderr.write(f'warning: the file system of {folder} does not support file locks ({e.strerror}): '
                             f'this run cannot keep a second start out of its folder; start one run per folder.\n')
            claim = RunClaim(folder, fd, created, locked=False)
            _held.append(claim)
            return claim
        if not _names_file(path, st):  # released and removed by its holder meanwhile: claim the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, (holder_line() + '\n').encode(), 0)
        claim = RunClaim(folder, fd, created)
        _held.append(claim)
        return claim
    raise UserError(f'cannot claim the run folder {folder}: its {LOCK_NAME} kept changing ({_MAX_TRIES} tries); '
                    f'is another program replacing it?')


def is_claimed(folder: str) -> Optional[str]:
    """The holder line when a running process claims ``folder``, else None; takes nothing (an early look, before a
    start does its slow work)."""
    path = os.path.join(folder, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO never blocks it
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(fd, wait=2.0)
    except OSError:  # no locks on this file system: nobody can hold one
        return None
    finally:
        os.close(fd)
    return None


def release_claims() -> None:
    """Release every claim of this process (the end of a run, successful or not)."""
    while _held:
        _held.pop().release()


def unique_suffix() -> str:
    """``<job>-<random>`` for a default folder name: the SLURM job (``SLURM_ARRAY_JOB_ID_SLURM_ARRAY_TASK_ID`` in an
    array job, else ``SLURM_JOB_ID``) when set, then 4 random hex digits."""
    array_job, task = os.environ.get('SLURM_ARRAY_JOB_ID'), os.environ.get('SLURM_ARRAY_TASK_ID')
    job = f'job{array_job}_{task}' if array_job and task else (
        f'job{os.environ["SLURM_JOB_ID"]}' if os.environ.get('SLURM_JOB_ID') else '')
    return '-'.join(filter(None, (job, secrets.token_hex(2))))


def timestamp() -> str:
    """The time to the millisecond, as a folder name: ``20261205-170203.123``."""
    now = time.time()
    return f'{time.strftime("%Y%m%d-%H%M%S", time.localtime(now))}.{int(now * 1000) % 1000:03d}'


def make_default_folder(name: Callable[[], str]) -> str:
    """Create the folder ``name()`` exclusively (its parents as needed), calling ``name`` again until a name is new;
    returns it."""
    for _ in range(_MAX_TRIES):
        path = name()
        parent, missing = os.path.dirname(path) or '.', []
        while parent and not os.path.exists(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        try:
            os.mkdir(path)
            _parents_made[path] = missing
            return path
        except FileExistsError:
            continue
    raise UserError(f'could not create a new run folder beside {path}: {_MAX_TRIES} names were taken; pass --output.')
