"""Bad input ends in a one-screen message and a non-zero exit code, never a traceback.

Entry points call :func:`run_cli`; anything the user can fix (a config key, a path, a checkpoint, a diverging run)
is raised as :class:`UserError` (or ``models.CheckpointError``) with a message that names the culprit and the fix.
"""
import sys
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
