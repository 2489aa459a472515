"""Checks of a training config that need a library's own parser, run at the start of a run (``utils.training.main``),
before any data is read or a run folder is written.

- ``aa``: the RandAugment / AutoAugment / AugMix policy string is parsed by timm's own functions, the ones the
  training loader will call (so this check accepts exactly what timm accepts), plus one rule timm does not enforce:
  every ``-`` section after the policy name is a key followed by a number (``m9``, ``mstd0.4``). timm skips a
  section without a number silently (``rand-mX`` trains with the default magnitude, ``rand-m9-`` and ``rand-m9-n1``
  alike), which would make a typo a silently different recipe.
"""
import re

from utils.config import Config, ConfigError

AA_EXAMPLES = 'rand-m9-n1-mstd0.4-inc1 (the published CIFAR policy), rand-m9-mstd0.5-inc1, original, v0, augmix-m5'


def _aa_parser(policy: str):
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
    if policy.startswith('rand'):
        return rand_augment_transform
    return augment_and_mix_transform if policy.startswith('augmix') else auto_augment_transform


def check_augment_policy(cfg: Config) -> None:
    """``cfg.aa`` (when set, for image data sets) is a policy timm parses, every section of it used; see above."""
    policy = cfg.aa
    if policy is None:
        return
    sections = policy.split('-')[1:]
    ignored = [s for s in sections if len(re.split(r'(\d.*)', s)) < 2]  # timm's own test, before it skips one
    problem = f'the section(s) {", ".join(repr(s) for s in ignored)} have no number (timm would skip them ' \
              f'silently)' if ignored else ''
    if not problem:
        try:
            _aa_parser(policy)(policy, dict(translate_const=100, img_mean=(124, 116, 104)))
        except (AssertionError, ValueError, KeyError, IndexError, TypeError) as e:
            problem = f'timm cannot parse it ({type(e).__name__}{f": {e}" if str(e) else ""})'
    if problem:
        raise ConfigError(f'config key \'aa\' is {policy!r}: {problem}.\nFix: --aa with a timm policy, e.g. '
                          f'{AA_EXAMPLES}; or --aa null for none. Format: <name>-<key><number>-... (timm.data.'
                          f'auto_augment).')
