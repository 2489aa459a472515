"""Batch-size invariance, for every layout (CIFAR, ImageNet, DVS): the same samples evaluated at batch 1, 3 and 16
give the same logits (to float rounding), the same energy report and the same spike report.

This is also the test that each sample's logits in eval mode do not depend on the other samples in its batch (alone
at batch 1, with 2 or 15 others). A reshape that mixes time and batch (``[T*B] -> [B, T]`` instead of ``[T, B]``, or
event frames ``[B, T, ...]`` reshaped to ``[T, B, ...]`` instead of transposed) passes at batch 1 and fails at every
other size; a per-batch average where a per-sample one is meant changes the reports when the last batch is
smaller (16 samples in batches of 3: five of 3 and one of 1)."""
import pytest
import torch

from conftest import reference_model
import energy

SIZES = (1, 3, 16)
SAMPLES = 16


def _samples(record):
    """16 distinct samples from the record's few: the inputs, then their mirror images and rolls (event frames
    cropped to 64 x 64 for speed: the model takes any size)."""
    x = record['input'][..., :64, :64]
    variants = [x, x.flip(-1), x.flip(-2), x.flip(-1, -2), x.roll(3, -1), x.roll(3, -2)]
    return torch.cat(variants)[:SAMPLES]


def _evaluate(model, x, size):
    """Logits, energy report and spike report of ``x`` in batches of ``size``, from one hooked pass."""
    counter, recorder = energy.EnergyCounter(model), energy.SpikeRecorder(model, samples=4)
    with counter, recorder, torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in torch.split(x, size)])
    return logits, counter.report(), recorder.report()


def _close(a, b, path='report'):
    """Recursive comparison of two report dicts: numbers to 1e-9 relative, everything else equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _close(a[key], b[key], f'{path}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f'{path}[{i}]')
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_batch_size_invariance(layout_reference):
    """The same 16 samples at batch 1, 3 and 16: logits equal to float rounding; energy and spike reports with the
    same numbers (per-sample averaging), the same firing maps and attention maps (the first samples, whatever the
    batches)."""
    model = reference_model(layout_reference)
    x = _samples(layout_reference)
    assert len(x) == SAMPLES
    runs = {size: _evaluate(model, x, size) for size in SIZES}
    logits_16, energy_16, spikes_16 = runs[SIZES[-1]]
    # the outputs really depend on each sample (the records' BatchNorm weights and statistics are randomised): any two
    # of the 16 differ somewhere by over 100 times the tolerance below (measured: at least 0.013), so logits computed
    # from another sample's data cannot pass for a sample's own
    between = (logits_16[:, None] - logits_16[None]).abs().amax(-1)
    assert between[~torch.eye(SAMPLES, dtype=torch.bool)].min() > 1e-3
    assert energy_16.ac_ops > 0 and min(n.rate for n in spikes_16.neurons[4:]) > 0  # and the neurons fire
    for size in SIZES[:-1]:
        logits, energy_b, spikes_b = runs[size]
        torch.testing.assert_close(logits, logits_16, rtol=1e-5, atol=1e-5)
        assert energy_b.samples == spikes_b.samples == SAMPLES
        assert spikes_b.batches == -(-SAMPLES // size)
        _close(energy_b.to_dict(), energy_16.to_dict())
        spikes_dict, reference = spikes_b.to_dict(), spikes_16.to_dict()
        assert spikes_dict.pop('batches') != reference.pop('batches')
        _close(spikes_dict, reference)
        assert torch.equal(spikes_b.inputs, spikes_16.inputs) and len(spikes_b.inputs) == 4
        for ours, theirs in zip(spikes_b.maps, spikes_16.maps):
            assert ours.name == theirs.name and torch.equal(ours.maps, theirs.maps)
        for ours, theirs in zip(spikes_b.attention, spikes_16.attention):
            assert torch.equal(ours.qk, theirs.qk)
