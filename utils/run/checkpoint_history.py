"""``--checkpoint-hist N``: the last N epoch checkpoints, ``checkpoint-<epoch>.pth.tar``, beside ``last`` and ``best``.

timm's ``CheckpointSaver`` keeps a history ranked by the metric; here the history is the last N epochs (what a user
goes back to after a divergence or to average weights), and it is written the way ``last``/``best`` are
(``utils.run.checkpoint``): each file is a hard link of the just-written ``last.pth.tar`` (a copy where links fail),
made under a temporary name and renamed, so a kill leaves every file whole. Pruning removes only files whose name is
exactly ``checkpoint-<number>.pth.tar``, oldest epoch first, and never the file of the epoch just saved; a file that
is gone already (removed by hand) is skipped. With N = 0 (the default) nothing is written or removed.
"""
import os
import re
from typing import List

from utils.errors import writing
from utils.run.checkpoint import LAST, link_or_copy

HISTORY = re.compile(r'^checkpoint-(\d+)\.pth\.tar$')


def history_name(epoch: int) -> str:
    return f'checkpoint-{epoch}.pth.tar'


def history_epochs(folder: str) -> List[int]:
    """The epochs of the history files in ``folder``, in increasing order (regular files and links to them)."""
    found = [(int(m.group(1)), name) for name in os.listdir(folder) for m in [HISTORY.match(name)] if m]
    return sorted(epoch for epoch, name in found if os.path.isfile(os.path.join(folder, name)))


def keep_history(folder: str, epoch: int, keep: int) -> List[int]:
    """Add epoch ``epoch`` (the folder's ``last.pth.tar``, already saved) to the history and prune it to ``keep``
    files; returns the epochs removed."""
    if keep <= 0:
        return []
    path = os.path.join(folder, history_name(epoch))
    with writing(path, f'{LAST} holds epoch {epoch}; only its history copy is missing.'):
        link_or_copy(os.path.join(folder, LAST), path)
    removed = []
    for old in history_epochs(folder)[:-keep]:
        if old == epoch:
            continue
        try:
            os.remove(os.path.join(folder, history_name(old)))
            removed.append(old)
        except FileNotFoundError:
            pass
    return removed
