"""Which operations RandAugment draws from (config key ``aa_ops``).

``aa`` (e.g. ``rand-m9-n1-mstd0.4-inc1``) sets how timm's RandAugment draws; ``aa_ops`` sets from which operations:

* ``timm`` (the default): timm's whole op list for the policy (what the Spikingformer CIFAR and ImageNet code used);
* ``spikformer``: the five ops of the published Spikformer CIFAR code (its ``cifar10/aa_snn.py``, a copy of timm's
  ``auto_augment.py`` with every other op commented out of both op lists): Equalize, Rotate, ShearX, TranslateXRel,
  TranslateYRel. Their magnitudes, probabilities and noise are timm's, unchanged, so restricting timm's RandAugment to
  them reproduces that policy (its ImageNet code used timm's own, whole list).

timm builds RandAugment inside ``create_loader`` from the ``aa`` string only; the restriction is applied to the built
transform (:func:`restrict_rand_augment`), which keeps everything else timm decides (fill colour, interpolation,
translate sizes) as it is.
"""
from typing import Optional, Tuple

from timm.data.auto_augment import RandAugment

from utils.config import ConfigError

SPIKFORMER_CIFAR_OPS = ('Equalize', 'Rotate', 'ShearX', 'TranslateXRel', 'TranslateYRel')
OP_SETS = {'timm': None, 'spikformer': SPIKFORMER_CIFAR_OPS}


def _rand_augments(transform) -> list:
    """Every timm RandAugment inside ``transform`` (a transform or nested ``Compose``)."""
    if isinstance(transform, RandAugment):
        return [transform]
    return [found for t in getattr(transform, 'transforms', ()) for found in _rand_augments(t)]


def restrict_rand_augment(transform, op_set: str, aa: Optional[str]) -> Tuple[str, ...]:
    """Keep only ``op_set``'s operations in the RandAugment of training ``transform``; returns the kept op names.

    Nothing to do for ``timm`` or without ``aa``. A set that does not fit the policy (``aa`` not a ``rand-`` policy,
    or an op the policy does not have) is a :class:`ConfigError` naming both keys.
    """
    wanted = OP_SETS[op_set]
    if wanted is None or not aa:
        return ()
    found = _rand_augments(transform)
    if not aa.startswith('rand') or not found:
        raise ConfigError(f'aa_ops {op_set!r} restricts RandAugment, but aa is {aa!r}, not a RandAugment policy '
                          f'(rand-...). Use aa_ops timm, or a rand- policy such as rand-m9-n1-mstd0.4-inc1.')
    for augment in found:
        kept = [op for op in augment.ops if op.name in wanted]
        missing = sorted(set(wanted) - {op.name for op in kept})
        if missing:
            raise ConfigError(f'aa_ops {op_set!r} needs the RandAugment ops {", ".join(missing)}, which policy aa '
                              f'{aa!r} does not have. Use aa_ops timm, or a policy without a t... op-set section.')
        augment.ops = kept
    return tuple(op.name for op in found[0].ops)
