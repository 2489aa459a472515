"""Spikingformer models. Importing this package registers the published variants with timm."""
from .checkpoint import CheckpointError, checkpoint_filter_fn, load_checkpoint, read_checkpoint, renamed_state_dict
from .layers import ATTENTION_SCALE, attention_product
from .neuron import LIF, lif, set_backend
from .spikingformer import VARIANTS, Spikingformer, SpikingformerModel

__all__ = ['ATTENTION_SCALE', 'CheckpointError', 'LIF', 'Spikingformer', 'SpikingformerModel', 'VARIANTS',
           'attention_product', 'checkpoint_filter_fn', 'lif', 'load_checkpoint', 'read_checkpoint',
           'renamed_state_dict', 'set_backend']
