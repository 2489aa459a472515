"""Forward hooks on every spiking neuron and every convolution/linear layer, with spike provenance by storage.

:class:`SpikeHooks` is the machinery shared by the energy counter (:class:`energy.EnergyCounter`) and the spike
recorder (:class:`energy.spikes.SpikeRecorder`). It finds everything by module type, never by module name:

* **Neurons** are ``models.LIF`` and every SpikingJelly neuron (:func:`neuron_types`); their outputs are spikes.
* **Counted layers** are every ``nn.Conv1d/2d/3d`` and ``nn.Linear`` (subclasses included).
* **Spike-preserving modules** (max pooling, identity, flatten, dropout in eval) output spikes whenever their input
  is spikes (the max of 0/1 values is 0/1; the rest copy or view).

Provenance is tracked by storage: each neuron output's storage is recorded with a *weak* reference
(``StorageWeakRef``) and the name of the neuron that produced it. An input is spikes when its storage is one of
those and that storage is still the same live allocation (a freed one whose address the allocator hands out again
is expired, so it cannot be mistaken for spikes). Views share their base's storage, also under
``torch.inference_mode`` (where ``Tensor._base`` is unset). A spike-preserving module whose output is a new tensor
marks it with the same source neuron, and ``direct=False`` after pooling (its values are no longer the neuron's);
one that returns a view or the input itself keeps the neuron's mark. So a counted layer knows whether its input is
spikes, which neuron fired them, and whether it reads that neuron's output itself (``direct``) or a pooled version of
it. A copy of spikes by anything else (``.contiguous()`` of a non-contiguous view, arithmetic) loses the mark:
conservative.

Subclasses override :meth:`on_input`, :meth:`on_spikes` and :meth:`on_layer`. Hooks read their tensors and never
change them, so the model's outputs are unchanged; hooks are removed on exit, also on error.
"""
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from spikingjelly.activation_based import neuron as sj_neuron
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

import models

COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
POOLING = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
SPIKE_PRESERVING = POOLING + (nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd)


def neuron_types() -> tuple:
    """Module types whose outputs are spikes: ``models.LIF`` and every SpikingJelly neuron.

    SpikingJelly's legacy ``clock_driven`` package (used by the published code) is included only when something has
    already imported it, so that counting never pays for its import.
    """
    types = [models.LIF, sj_neuron.BaseNode]
    legacy = sys.modules.get('spikingjelly.clock_driven.neuron')
    if legacy is not None:
        types.append(legacy.BaseNode)
    return tuple(types)


_EXACT = 1 << 24  # float32 represents every integer up to 2^24, so a float32 sum of that many 0/1 values is exact


def count_ones(spikes: torch.Tensor) -> torch.Tensor:
    """The number of ones in a 0/1 tensor, exactly, as a float64 device scalar, without a host sync.

    A float32 sum is exact for up to 2^24 elements (every partial sum is a small integer), and on CPU it is about 30
    times faster than ``count_nonzero``; larger tensors are summed in rows of 2^24 and the row sums added in float64.
    Half-precision spikes (autocast) are summed in float32 too.
    """
    flat = spikes.reshape(-1)
    n = flat.numel()
    if n <= _EXACT:
        return flat.sum(dtype=torch.float32).double()
    whole = n - n % _EXACT
    total = flat[:whole].view(-1, _EXACT).sum(dim=1, dtype=torch.float32).sum(dtype=torch.float64)
    return total + flat[whole:].sum(dtype=torch.float32).double()


@dataclass(eq=False)
class SpikeMark:
    """A spike storage seen in the current forward pass: the neuron that fired it, whether it is that neuron's
    output itself (or a view of it) rather than a pooled version, and its count of ones once some layer asked."""
    ref: StorageWeakRef
    source: str
    direct: bool = True
    ones: Optional[torch.Tensor] = None


class SpikeHooks:
    """Context manager that hooks every neuron, counted layer and spike-preserving module of ``model``.

    The number of samples is the leading dimension of the model's first positional input, per call (``[B, C, H, W]``
    images and ``[B, T, C, H, W]`` event frames alike); ``samples`` and ``batches`` count them.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.samples = 0
        self.batches = 0
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        self._marks: Dict[int, SpikeMark] = {}

    # ------------------------------------------------------------------------------------------- for subclasses
    def setup(self, names: Dict[nn.Module, str]) -> None:
        """Called once before the hooks are attached, with every module's name (the model itself: '')."""

    def on_input(self, x) -> None:
        """Called before each forward pass of the model with its first positional input (``None`` if there is none)."""

    def on_spikes(self, name: str, module: nn.Module, spikes: torch.Tensor, mark: SpikeMark) -> None:
        """Called after each neuron call with its output (already marked)."""

    def on_layer(self, name: str, module: nn.Module, x: torch.Tensor, output: torch.Tensor,
                 mark: Optional[SpikeMark]) -> None:
        """Called after each counted layer call with its input, output and the input's mark (``None``: not spikes)."""

    # ------------------------------------------------------------------------------------------------- machinery
    def __enter__(self):
        try:
            self._attach()
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._detach()
        self._marks.clear()

    def _attach(self) -> None:
        neurons = neuron_types()
        names = {module: name for name, module in self.model.named_modules()}
        self.setup(names)
        hook = self._handles.append
        hook(self.model.register_forward_pre_hook(self._on_model_input))
        for module, name in names.items():
            if isinstance(module, neurons):
                hook(module.register_forward_hook(self._neuron_hook(name or type(module).__name__)))
            elif isinstance(module, COUNTED):
                hook(module.register_forward_hook(self._layer_hook(name or type(module).__name__)))
            elif isinstance(module, SPIKE_PRESERVING):
                hook(module.register_forward_hook(self._on_preserving))

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_model_input(self, module, args) -> None:
        self._marks.clear()
        x = args[0] if args else None
        self.samples += x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else 1
        self.batches += 1
        self.on_input(x)

    def _mark(self, tensor: torch.Tensor, source: str, direct: bool) -> Optional[SpikeMark]:
        storage = tensor.untyped_storage()
        if not storage.data_ptr():
            return None
        mark = self._marks[storage.data_ptr()] = SpikeMark(StorageWeakRef(storage), source, direct)
        return mark

    def spike_mark(self, tensor: torch.Tensor) -> Optional[SpikeMark]:
        """The mark of ``tensor``'s storage if it holds spikes of the current forward pass, else ``None``."""
        mark = self._marks.get(tensor.untyped_storage().data_ptr())
        return mark if mark is not None and not mark.ref.expired() else None

    def ones(self, tensor: torch.Tensor, mark: Optional[SpikeMark]) -> torch.Tensor:
        """Ones in the spike tensor ``tensor`` (a device scalar). A tensor covering its whole spike storage is counted
        once per forward, however many layers read it (Q, K and V convolutions share one input)."""
        whole = (mark is not None and tensor.storage_offset() == 0
                 and tensor.numel() * tensor.element_size() == tensor.untyped_storage().nbytes())
        if not whole:
            return count_ones(tensor)
        if mark.ones is None:
            mark.ones = count_ones(tensor)
        return mark.ones

    def _neuron_hook(self, name: str):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                mark = self._mark(output, name, direct=True)
                self.on_spikes(name, module, output, mark)
        return hook

    def _layer_hook(self, name: str):
        def hook(module, args, output):
            x = args[0]
            self.on_layer(name, module, x, output, self.spike_mark(x))
        return hook

    def _on_preserving(self, module, args, output) -> None:
        if not (args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor)):
            return
        mark = self.spike_mark(args[0])
        if mark is None:
            return
        if output.untyped_storage().data_ptr() == args[0].untyped_storage().data_ptr():
            return  # a view of the input (identity, flatten, dropout in eval): its mark stands
        self._mark(output, mark.source, direct=mark.direct and not isinstance(module, POOLING))
