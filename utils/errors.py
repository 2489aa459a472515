"""Bad input ends in a one-screen message and a non-zero exit code, never a traceback.

Entry points call :func:`run_cli`; anything the user can fix (a config key, a path, a checkpoint, a diverging run)
is raised as :class:`UserError` (or ``models.CheckpointError``) with a message that names the culprit and the fix.
"""
import os
import shutil
import sys
from contextlib import contextmanager
from typing import Callable, Optional, Sequence

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """An error the user can fix; its message is shown as is."""


class DataError(UserError):
    """A data set that is missing or unreadable."""


class NonFiniteLossError(UserError):
    """Training diverged: the loss is NaN or infinite."""


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f'error: {message.rstrip()}\n')
    sys.stderr.flush()
    return code


def run_cli(main_fn: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None) -> None:
    """Run ``main_fn(argv)`` and exit: 0 on success, 2 on bad input, 130 on Ctrl-C (message, no traceback)."""
    from models import CheckpointError  # late: keeps `utils.errors` importable without torch for tools
    try:
        main_fn(argv)
    except (UserError, CheckpointError) as e:
        sys.exit(_fail(str(e), EXIT_BAD_INPUT))
    except FileNotFoundError as e:
        sys.exit(_fail(f'file not found: {e.filename or e}\nCheck the path (relative paths start in the '
                       f'current directory).', EXIT_BAD_INPUT))
    except KeyboardInterrupt:
        sys.exit(_fail('interrupted. A training run continues from its last completed epoch with '
                       '--resume <run folder>/last.pth.tar', EXIT_INTERRUPTED))
    sys.exit(0)


def size_text(n: float) -> str:
    """``n`` bytes for people: ``512 B``, ``3.4 MiB``, ``1.2 GiB``."""
    for unit in ('B', 'KiB', 'MiB'):
        if n < 1024:
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024
    return f'{n:.1f} GiB'


def free_space_text(path: str) -> str:
    """``'1.2 GiB free on that disk'`` for the disk that holds ``path`` (or would, once created)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        free = shutil.disk_usage(path).free
        return f'{size_text(free)} free on that disk' + (': it is full' if free < 2 ** 20 else '')
    except OSError:
        return 'free space unknown'


class WriteError(UserError):
    """An output that could not be written (disk full, read-only, a file in the way)."""


def write_failure(path: str, error: BaseException, consequence: str) -> WriteError:
    """A one-screen :class:`WriteError` for a failed write of ``path``: the reason, the free space, ``consequence``
    (what was and was not saved, and what to do)."""
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:  # torch.save reports a full disk as a RuntimeError of many lines (`basic_ios::clear`, ...)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return WriteError(f'cannot write {path}: {reason[:200]} ({free_space_text(path)}).\n{consequence}')


@contextmanager
def writing(path: str, consequence: str):
    """Turn a failed write of ``path`` inside the block into :func:`write_failure` (RuntimeError included: it is how
    ``torch.save`` reports a full disk)."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        raise write_failure(path, e, consequence) from None
