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
it. Value-preserving copies and sums keep a mark (see "Spike counts" below); any other arithmetic on spikes loses
it: conservative.

**Spike counts.** Residual streams that add spikes to spikes (Spikformer, SEW-style blocks) carry spike *counts*
0, 1, 2, ... A torch function mode (:class:`OpWatch`, active only inside the model's forward) follows them: the
sum of two marked tensors (spikes or counts; ``torch.add``, ``+``, ``+=``) is marked as counts whose largest possible
value ``count_max`` is the sum of the operands' (1 for spikes), and a value-preserving copy (``contiguous``,
``clone``, a dtype cast, ``cat``/``stack`` of marked tensors) keeps its operand's mark. Why a mode and not values:
the structural bound needs no host sync and does not depend on what one batch happened to hold.

**Products and uncounted modules.** The same mode sees every matrix product and functional convolution/linear. One
that runs inside a counted layer is that layer's own; inside a recognised attention (:func:`is_attention`) it is the
attention product the counter prices by the paper's formula; anywhere else it is *unclassified*: reported by module
name through :meth:`on_unclassified`, never silently dropped. So is every executed leaf module (one without child
modules) that owns parameters and is neither a counted layer, a neuron nor a normalisation: a custom op. (A module
with children may hold parameters its forward never uses, such as the unused ``pos_embed`` of the published
Spikformer DVS model; its parameters that do enter a product are caught as products.)

Subclasses override :meth:`on_input`, :meth:`on_spikes`, :meth:`on_layer` and :meth:`on_unclassified`. Hooks read
their tensors and never change them, so the model's outputs are unchanged; hooks are removed on exit, also on error.
"""
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from spikingjelly.activation_based import neuron as sj_neuron
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

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


def count_ones(spikes: torch.Tensor, count_max: int = 1) -> torch.Tensor:
    """The number of ones in a 0/1 tensor (the sum of a tensor of spike counts up to ``count_max``), exactly, as a
    float64 device scalar, without a host sync.

    A float32 sum is exact while every partial sum stays below 2^24 (small integers), and on CPU it is about 30
    times faster than ``count_nonzero``; larger tensors are summed in rows of ``2^24 / count_max`` elements and the
    row sums added in float64. Half-precision spikes (autocast) are summed in float32 too.
    """
    flat = spikes.reshape(-1)
    n = flat.numel()
    row = max(_EXACT // max(int(count_max), 1), 1)
    if n <= row:
        return flat.sum(dtype=torch.float32).double()
    whole = n - n % row
    total = flat[:whole].view(-1, row).sum(dim=1, dtype=torch.float32).sum(dtype=torch.float64)
    return total + flat[whole:].sum(dtype=torch.float32).double()


def is_attention(module: nn.Module) -> bool:
    """A spiking self-attention whose products the counter prices by the paper's formula: ``models``'
    ``SpikingSelfAttention``, or any module with an integer ``num_heads`` and neurons ``q_lif``, ``k_lif`` and
    ``v_lif`` (the published Spikformer/Spikingformer SSA naming, whatever class defines it)."""
    from models.layers import SpikingSelfAttention
    if isinstance(module, SpikingSelfAttention):
        return True
    neurons = neuron_types()
    return (isinstance(getattr(module, 'num_heads', None), int)
            and all(isinstance(getattr(module, role, None), neurons) for role in ('q_lif', 'k_lif', 'v_lif')))


def attention_dim(module: nn.Module) -> Optional[int]:
    """The embedding width of an attention found by :func:`is_attention`: its ``dim`` attribute, else the output
    width of its ``q_conv`` or ``q_linear`` (``None`` when none of these exists)."""
    dim = getattr(module, 'dim', None)
    if isinstance(dim, int):
        return dim
    for child in ('q_conv', 'q_linear'):
        layer = getattr(module, child, None)
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            return layer.out_channels
        if isinstance(layer, nn.Linear):
            return layer.out_features
    return None


# Functions the op watch follows (see the module docstring). Tensor methods and torch functions are distinct objects.
T_ = torch.Tensor
ADDS = frozenset({torch.add, T_.add, T_.__add__, T_.__radd__})
IN_PLACE_ADDS = frozenset({T_.add_, T_.__iadd__})
COPIES = frozenset({T_.contiguous, T_.clone, torch.clone, T_.float, T_.half, T_.bfloat16, T_.double, T_.to,
                    T_.type_as})
JOINS = frozenset({torch.cat, torch.stack, torch.concat})
PRODUCTS = frozenset({torch.matmul, T_.matmul, T_.__matmul__, T_.__rmatmul__, torch.mm, T_.mm, torch.bmm, T_.bmm,
                      torch.einsum, torch.baddbmm, torch.addmm, torch.addbmm, F.linear, F.bilinear, torch.conv1d,
                      torch.conv2d, torch.conv3d, F.conv1d, F.conv2d, F.conv3d, torch.conv_transpose1d,
                      torch.conv_transpose2d, torch.conv_transpose3d, F.conv_transpose1d, F.conv_transpose2d,
                      F.conv_transpose3d})
WATCHED = ADDS | IN_PLACE_ADDS | COPIES | JOINS | PRODUCTS
# Modules that own parameters and cost nothing in the paper's method (normalisations fold into the layer before)
FREE = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.modules.normalization.LocalResponseNorm)
del T_


def product_dense_ops(func, args, output) -> Optional[int]:
    """Dense multiply-accumulates of one matrix product or functional convolution/linear (``None`` if unknown)."""
    if not isinstance(output, torch.Tensor):
        return None
    if func in (F.linear, F.bilinear) or 'conv' in getattr(func, '__name__', ''):
        weight = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else None
        if weight is None:
            return None
        if 'transpose' in func.__name__:  # every input element is spread over out/groups x kernel outputs
            return args[0].numel() * weight[0].numel()
        return output.numel() * weight[0].numel()
    first = args[1] if func in (torch.baddbmm, torch.addmm, torch.addbmm) else args[0]
    if isinstance(first, torch.Tensor) and first.dim() >= 1:
        return output.numel() * first.shape[-1]
    return None


@dataclass(eq=False)
class SpikeMark:
    """A spike storage seen in the current forward pass: the neuron that fired it, whether it is that neuron's
    output itself (or a view of it) rather than a pooled version, and its count of ones once some layer asked."""
    ref: StorageWeakRef
    source: str
    direct: bool = True
    ones: Optional[torch.Tensor] = None
    count_max: int = 1  # 1: spikes (0/1); n > 1: spike counts, a sum of spike tensors, at most n


class OpWatch(TorchFunctionMode):
    """The torch function mode of :class:`SpikeHooks` (see the module docstring): it calls every function unchanged
    and then lets the hooks look at its operands and result."""

    def __init__(self, hooks: 'SpikeHooks'):
        super().__init__()
        self.hooks = hooks

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if func in WATCHED:
            self.hooks._on_op(func, args, kwargs, output)
        return output


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
        self._stack: List[nn.Module] = []  # the modules whose forward is running, outermost first
        self._names: Dict[nn.Module, str] = {}
        self._watch: Optional[OpWatch] = None
        self._owners: set = set()  # ids of counted layers and recognised attentions: their products are theirs
        self._custom: set = set()  # ids of modules with parameters that nothing counts

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

    def on_unclassified(self, name: str, what: str, dense_ops: Optional[int]) -> None:
        """Called for each operation the hooks cannot classify: a matrix product or functional convolution/linear
        outside counted layers and recognised attentions, or a call of a leaf module that owns parameters but is no
        counted layer, neuron or normalisation. ``name`` is the innermost running module's (the model: '')."""

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
        self._stop_watch()

    def _attach(self) -> None:
        neurons = neuron_types()
        names = self._names = {module: name for name, module in self.model.named_modules()}
        self._owners.clear()
        self._custom.clear()
        self.setup(names)
        hook = self._handles.append
        hook(self.model.register_forward_pre_hook(self._on_model_input))
        hook(self.model.register_forward_hook(lambda *_: self._stop_watch(), always_call=True))
        for module in names:
            if isinstance(module, COUNTED) or is_attention(module):
                self._owners.add(id(module))
            elif (not isinstance(module, FREE + neurons) and not module._modules
                  and any(p is not None for p in module._parameters.values())):
                self._custom.add(id(module))
        for module, name in names.items():
            hook(module.register_forward_pre_hook(self._enter_module))
            hook(module.register_forward_hook(self._leave_module, always_call=True))
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
        self._stack.clear()
        self._stop_watch()
        self._watch = OpWatch(self)
        self._watch.__enter__()
        x = args[0] if args else None
        self.samples += x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else 1
        self.batches += 1
        self.on_input(x)

    def _stop_watch(self) -> None:
        if self._watch is not None:
            watch, self._watch = self._watch, None
            watch.__exit__(None, None, None)

    def _enter_module(self, module, args) -> None:
        self._stack.append(module)
        if id(module) in self._custom:
            self.on_unclassified(self._names.get(module, ''), f'module {type(module).__name__} with parameters',
                                 None)

    def _leave_module(self, module, args, output) -> None:
        if self._stack and self._stack[-1] is module:
            self._stack.pop()

    def _on_op(self, func, args, kwargs, output) -> None:
        """What :class:`OpWatch` reports: follow spike marks through sums and copies, classify products."""
        if func in PRODUCTS:
            if not any(id(m) in self._owners for m in self._stack):
                name = self._names.get(self._stack[-1], '') if self._stack else ''
                self.on_unclassified(name, f'{getattr(func, "__name__", str(func))}()',
                                     product_dense_ops(func, args, output))
            return
        if not isinstance(output, torch.Tensor):
            return
        if func in JOINS:
            tensors = args[0] if args else kwargs.get('tensors', ())
            marks = [self.spike_mark(t) if isinstance(t, torch.Tensor) else None for t in tensors]
            if marks and all(marks):
                self._mark(output, marks[0].source, direct=False, count_max=max(m.count_max for m in marks))
            return
        first = args[0] if args else None
        if not isinstance(first, torch.Tensor):
            return
        a = self.spike_mark(first)
        if func in COPIES:
            if a is not None and output.untyped_storage().data_ptr() != first.untyped_storage().data_ptr():
                self._mark(output, a.source, direct=a.direct, count_max=a.count_max)
            return
        other = args[1] if len(args) > 1 else kwargs.get('other')
        if isinstance(other, torch.Tensor):
            b = self.spike_mark(other)
        else:  # 0 + spikes (as in sum(list_of_spikes)) is the spikes
            b = SpikeMark(None, '', count_max=0) if other == 0 else None
        summed = a is not None and b is not None and kwargs.get('alpha', 1) == 1
        if func in IN_PLACE_ADDS:
            if summed:
                self._mark(output, a.source, direct=False, count_max=a.count_max + b.count_max)
            else:  # a marked storage that now holds something else is no longer spikes
                self._marks.pop(output.untyped_storage().data_ptr(), None)
        elif summed:
            self._mark(output, a.source if a.count_max else b.source, direct=False,
                       count_max=a.count_max + b.count_max)

    def _mark(self, tensor: torch.Tensor, source: str, direct: bool, count_max: int = 1) -> Optional[SpikeMark]:
        storage = tensor.untyped_storage()
        if not storage.data_ptr():
            return None
        mark = self._marks[storage.data_ptr()] = SpikeMark(StorageWeakRef(storage), source, direct,
                                                           count_max=count_max)
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
        count_max = mark.count_max if mark is not None else 1
        if not whole:
            return count_ones(tensor, count_max)
        if mark.ones is None:
            mark.ones = count_ones(tensor, count_max)
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
        self._mark(output, mark.source, direct=mark.direct and not isinstance(module, POOLING),
                   count_max=mark.count_max)
