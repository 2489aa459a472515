"""The paper's energy estimate (docs/recipe.md section 6) for any Spikingformer, found from the model with forward
hooks.

``estimate_energy(model, batches)`` evaluates the model once and returns an :class:`EnergyReport`: per sample,
MACs (layers on real-valued input: the first convolution over all T steps, the head), ACs (layers on spikes, times
the input firing rate, and the attention products), energy ``4.6 pJ x MACs + 0.9 pJ x ACs``, and one entry per
counted operation. No per-model tables and no module names: layer kinds come from where each input was produced.

``record_spikes(model, batches)`` runs the same kind of pass (the same hooks, :mod:`energy.hooks`) and returns a
:class:`SpikeReport`: every neuron's firing rate per time step, silent and always-firing channels, tokenizer firing
maps and the attention maps of one sample (figures: :mod:`energy.spike_plots`).
"""
from .constants import E_AC_PJ, E_MAC_PJ
from .counter import EnergyCounter, dense_ops, neuron_types
from .estimate import estimate_energy, estimate_energy_rules
from .paper import PAPER, PaperRow, paper_row
from .report import AttentionRates, EnergyReport, LayerEnergy, Unclassified
from .spikes import SpikeRecorder, SpikeReport, record_spikes

__all__ = ['AttentionRates', 'E_AC_PJ', 'E_MAC_PJ', 'EnergyCounter', 'EnergyReport', 'LayerEnergy', 'PAPER',
           'PaperRow', 'SpikeRecorder', 'SpikeReport', 'Unclassified', 'dense_ops', 'estimate_energy',
           'estimate_energy_rules', 'neuron_types', 'paper_row', 'record_spikes']
