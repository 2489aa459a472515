"""Spikingformer and the Spikformer baseline. Importing this package registers the published variants with timm."""
import warnings

# SpikingJelly scripts a few functions with torch.jit at import, which this torch deprecates: one warning per run
# that the user can do nothing about (pytest.ini filters it the same way).
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)

from .checkpoint import (CheckpointError, check_checkpoint, checkpoint_filter_fn, load_checkpoint, read_checkpoint,
                         renamed_state_dict)
from .layers import ATTENTION_SCALE, attention_product
from .neuron import LIF, lif, set_backend
from .spikingformer import VARIANTS, Spikingformer, SpikingformerModel
from .spikformer import SPIKFORMER_VARIANTS, Spikformer, SpikformerModel

__all__ = ['ATTENTION_SCALE', 'CheckpointError', 'LIF', 'SPIKFORMER_VARIANTS', 'Spikformer', 'SpikformerModel',
           'Spikingformer', 'SpikingformerModel', 'VARIANTS', 'attention_product', 'check_checkpoint',
           'checkpoint_filter_fn', 'lif',            'load_checkpoint', 'read_checkpoint', 'renamed_state_dict', 'set_backend']
