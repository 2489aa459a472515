"""Activation checkpointing that leaves every number as it was, BatchNorm running statistics included.

``torch.utils.checkpoint`` (what timm's ``checkpoint_seq`` calls) runs a module's forward a second time during
backward to rebuild the activations it did not keep. For a module with BatchNorm in training mode that second forward
also updates ``running_mean``, ``running_var`` and ``num_batches_tracked`` a second time: the weights and gradients
come out right but the statistics the model evaluates with do not (with momentum 0.1, every step would move them
twice). :func:`checkpoint_module` saves those buffers before the recomputation and puts them back after it (they are
a few numbers per channel). The recomputation itself must run exactly the forward's operations: the checkpoint matches
the tensors it saves one by one with those of the first forward, so a BatchNorm switched to another mode for the
recomputation (``track_running_stats = False`` or ``eval()``) would save other tensors and be refused; a momentum of
0 would still count ``num_batches_tracked`` and turn a non-finite batch statistic into NaN statistics. Restoring the
buffers leaves the recomputation untouched and the statistics bit for bit those of one forward.

The recomputation is detected by counting calls of the checkpointed function: non-reentrant checkpointing calls it
once in forward and once more for the recomputation in backward. Autocast and the random-number state are restored
by ``torch.utils.checkpoint`` itself (``preserve_rng_state``), so bf16/fp16 autocast and any stochastic layer give
the same recomputation. Non-reentrant mode is the one PyTorch recommends, and the one that works under DDP (also with
``no_sync`` for gradient accumulation) and with inputs that do not require gradients (the first tokenizer stage).

Model-agnostic on purpose: any model that runs a list of blocks (Spikingformer here, the Spikformer baseline too)
can call :func:`checkpoint_sequence` from its ``forward_features`` when its ``grad_checkpointing`` flag is set.
"""
import contextlib
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)


@contextlib.contextmanager
def running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Within the block, the BatchNorm running statistics of ``module`` may change; after it they are what they were
    before (restored in place, so every reference to the buffers stays valid)."""
    buffers = [b for m in module.modules() if isinstance(m, _BATCH_NORMS)
               for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    with torch.no_grad():
        saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)


def checkpoint_module(module: nn.Module, x: torch.Tensor, function: Optional[Callable] = None) -> torch.Tensor:
    """``module(x)`` (or ``function(x)``, a part of ``module`` such as a stem that is not a module of its own), its
    activations recomputed in backward instead of kept, the BatchNorm statistics of ``module`` updated once."""
    function = function or module
    calls = [0]

    def run(inp: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 1:
            return function(inp)
        with running_stats_kept(module):  # the recomputation in backward
            return function(inp)

    return checkpoint(run, x, use_reentrant=False)


def checkpoint_sequence(modules: Iterable[nn.Module], x: torch.Tensor, plain_last: int = 0) -> torch.Tensor:
    """Run ``modules`` one after another, each checkpointed on its own (only the input of each is kept), when
    gradients are being recorded; a plain run under ``torch.no_grad`` (evaluation), where there is nothing to save.
    The last ``plain_last`` modules run plainly, keeping their activations (for a module whose activations do not
    add to the step's peak, recomputing them would cost time and save nothing)."""
    modules = list(modules)
    for i, module in enumerate(modules):
        recompute = torch.is_grad_enabled() and i < len(modules) - plain_last
        x = checkpoint_module(module, x) if recompute else module(x)
    return x
