"""Bad input ends in a one-screen message and a non-zero exit code, never a traceback.

Entry points call :func:`run_cli`; anything the user can fix (a config key, a path, a checkpoint, a diverging run)
is raised as :class:`UserError` (or ``models.CheckpointError``) with a message that names the culprit and the fix.

Ctrl-C prints one line and exits 130 at any moment once a script runs: entry points import only this module (no
third-party imports) at the top and do their heavy imports inside :func:`run_cli` (scripts that must import at
the top wrap those imports in :func:`exit_on_interrupt`). The first Ctrl-C raises KeyboardInterrupt as usual, so
clean-up code runs; one that Python would print and drop is raised again; a second Ctrl-C while the process
winds down ends it at once, without a traceback.
"""
import _thread
import os
import signal
import sys

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
QUIET_EXIT_DELAY_S = 1.0  # see FailedOnAnotherRank


class UserError(Exception):
    """An error the user can fix; its message is shown as is."""


class DataError(UserError):
    """A data set that is missing or unreadable."""


class NonFiniteLossError(UserError):
    """Training diverged: the loss is NaN or infinite."""


class FailedOnAnotherRank(Exception):
    """Raised in the processes of a distributed run that did not fail themselves when another one did (see
    ``utils.training.distributed.fail_together``): the failing process prints the message, this one exits quietly with
    the same exit ``code``, so a run prints one message however many processes it has. It exits a second after
    raising, so that the process with the message ends first and a launcher that names the first process to fail
    (torchrun's "Root Cause") names that one."""

    def __init__(self, rank: int, code: int):
        super().__init__(f'process {rank} of the run failed (exit code {code}); its message says why')
        self.rank, self.code = rank, code


INTERRUPTED = ('interrupted. A training run continues from its last completed epoch with '
               '--resume <run folder>/last.pth.tar')


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f'error: {message.rstrip()}\n')
    sys.stderr.flush()
    return code


def user_message(error: BaseException) -> str:
    """The message of a user error. One raised in a DataLoader worker reaches the main process re-raised with the
    worker's whole traceback as its message ("Caught DataError in DataLoader worker process 0. Original Traceback
    ..."); only the original message, after the last ``module.Class:`` line of that traceback, is kept."""
    message = str(error)
    marker = f'{type(error).__module__}.{type(error).__qualname__}: '
    if 'Original Traceback' in message and marker in message:
        message = message.rsplit(marker, 1)[1]
    return message


def exit_code(error: BaseException) -> int:
    """The exit code :func:`run_cli` gives ``error``: 2 for bad input (a user error or a missing file), else 1."""
    return EXIT_BAD_INPUT if isinstance(error, _user_error_types() + (FileNotFoundError,)) else 1


def _user_error_types() -> tuple:
    # models.CheckpointError counts only once `models` is imported (no checkpoint error can exist before); looking it
    # up here keeps this module free of torch, so that scripts can import it first, before their heavy imports
    checkpoint_error = getattr(sys.modules.get('models'), 'CheckpointError', None)
    return (UserError,) + ((checkpoint_error,) if isinstance(checkpoint_error, type) else ())


class _Interrupts:
    """Ctrl-C handling of this process: the message, the process that installed it, and how far an interrupt got."""
    message = INTERRUPTED
    owner_pid = None
    pending = False   # a KeyboardInterrupt is unwinding; another Ctrl-C ends the process at once
    reported = False  # its line is printed
    in_hook = False   # in _reraise_swallowed_interrupts


def _on_sigint(signum, frame):
    """The first Ctrl-C raises KeyboardInterrupt (clean-up code runs); another one before the process has ended
    exits at once, with the line if it is not out yet. Forked DataLoader workers raise KeyboardInterrupt every time:
    PyTorch's worker loop ends quietly on it."""
    if _Interrupts.in_hook:  # a KeyboardInterrupt is about to be raised again anyway
        return
    if os.getpid() != _Interrupts.owner_pid or not _Interrupts.pending:
        _Interrupts.pending = os.getpid() == _Interrupts.owner_pid
        raise KeyboardInterrupt
    if not _Interrupts.reported:
        _fail(_Interrupts.message, EXIT_INTERRUPTED)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):  # a closed or broken stdout
        pass
    os._exit(EXIT_INTERRUPTED)


def _interrupt_main_later():
    import time
    while _Interrupts.in_hook:  # wait until the main thread has left the hook, then a little longer
        time.sleep(0.001)
    time.sleep(0.01)
    _thread.interrupt_main()


def _reraise_swallowed_interrupts(unraisable):
    """A KeyboardInterrupt raised where Python can only print and drop exceptions (an at-fork callback while a
    DataLoader starts its workers, a ``__del__``) is raised again in the main thread once it has left this hook,
    from another thread (raised from here, it would be dropped again); other unraisable exceptions go to Python's
    hook, except while the process winds down from an interrupt (then they are its consequences, e.g. a DataLoader
    iterator interrupted in its constructor fails in ``__del__``, and the one line says it all)."""
    if unraisable.exc_type is None or not issubclass(unraisable.exc_type, KeyboardInterrupt):
        if not (_Interrupts.pending and os.getpid() == _Interrupts.owner_pid):
            sys.__unraisablehook__(unraisable)
        return
    import threading  # only on this rare path: this module stays quick to import
    _Interrupts.in_hook, _Interrupts.pending = True, False
    try:
        threading.Thread(target=_interrupt_main_later, daemon=True).start()
    finally:
        _Interrupts.in_hook = False


def _handle_interrupts(message: str) -> None:
    _Interrupts.message = message
    try:
        signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread: signals are the main thread's business
        return
    if _Interrupts.owner_pid != os.getpid():
        _Interrupts.owner_pid, _Interrupts.pending, _Interrupts.reported = os.getpid(), False, False
    sys.unraisablehook = _reraise_swallowed_interrupts
    sys.excepthook = _interrupt_excepthook


def _interrupt_excepthook(exc_type, exc, tb):
    """A KeyboardInterrupt that reaches the top level outside :func:`run_cli` and :class:`exit_on_interrupt` (a
    script's module-level code between the two, say) still ends with the one line and exit 130; any other
    uncaught exception keeps Python's report."""
    if not issubclass(exc_type, KeyboardInterrupt) or os.getpid() != _Interrupts.owner_pid:
        sys.__excepthook__(exc_type, exc, tb)
        return
    if not _Interrupts.reported:
        _Interrupts.reported = True
        _fail(_Interrupts.message, EXIT_INTERRUPTED)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # a closed or missing stream
            pass
    os._exit(EXIT_INTERRUPTED)  # the exit status of an uncaught exception would be 1


def exit_interrupted(message: str = INTERRUPTED) -> None:
    """Print ``message`` as the one line of a Ctrl-C and exit 130 (a further Ctrl-C ends the wind-down silently)."""
    _Interrupts.pending = True
    if not _Interrupts.reported:
        _Interrupts.reported = True
        _fail(message, EXIT_INTERRUPTED)
    sys.exit(EXIT_INTERRUPTED)


class exit_on_interrupt:  # noqa: N801 (used as a context manager, like contextlib's)
    """``with exit_on_interrupt(message):`` Ctrl-C inside the block exits with one line (e.g. around a script's
    imports, which run before :func:`run_cli`)."""

    def __init__(self, message: str = INTERRUPTED):
        self.message = message

    def __enter__(self):
        _handle_interrupts(self.message)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            exit_interrupted(self.message)
        return False


def run_cli(main_fn, argv=None, interrupted: str = INTERRUPTED) -> None:
    """Run ``main_fn(argv)`` and exit: 0 on success, 2 on bad input, 130 on Ctrl-C (one line, no traceback).

    Installs the process's SIGINT handler (see the module docstring); ``interrupted`` is the line Ctrl-C prints.
    """
    _handle_interrupts(interrupted)
    try:
        main_fn(argv)
    except KeyboardInterrupt:
        exit_interrupted(interrupted)
    except FailedOnAnotherRank as e:  # the failing process prints the message (see the class)
        import time  # here, not at the top: this module stays quick to import (see the module docstring)
        time.sleep(QUIET_EXIT_DELAY_S)
        sys.exit(e.code)
    except Exception as e:
        if isinstance(e, _user_error_types()):
            sys.exit(_fail(user_message(e), EXIT_BAD_INPUT))
        if isinstance(e, FileNotFoundError):
            sys.exit(_fail(f'file not found: {e.filename or e}\nCheck the path (relative paths start in the '
                           f'current directory).', EXIT_BAD_INPUT))
        raise
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
    import shutil  # here, not at the top: this module stays quick to import (see the module docstring)
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


class writing:  # noqa: N801 (used as a context manager, like contextlib's)
    """``with writing(path, consequence):`` a failed write of ``path`` inside the block becomes :func:`write_failure`
    (RuntimeError included: it is how ``torch.save`` reports a full disk)."""

    def __init__(self, path: str, consequence: str):
        self.path, self.consequence = path, consequence

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, (OSError, RuntimeError)):
            raise write_failure(self.path, exc, self.consequence) from None
        return False
