"""Data: the data sets, their loaders and the checks of what they hold (no run folder, no training loop).

- ``loaders``: the data sets by name and their loaders (timm's pipeline for images, plain loaders for event frames).
- ``data_checks``: checks of the data against the config, run when the data sets are built.
- ``input_checks``: checks of a training config that need a library's own parser (the augmentation policy).
- ``dvs_data``: DVS128 Gesture and CIFAR10-DVS: frames by event count, cached by SpikingJelly.
- ``aedat``: decoders of the two raw event formats of the DVS data sets.
- ``image_files``: image files of the ImageFolder data sets (timm's ``ImageDataset``, 16-bit images scaled).
- ``folder_data``: your own image tree, ``--dataset folder --data-dir DIR``.
- ``rand_augment_ops``: which operations RandAugment draws from (``aa_ops``).
- ``resumable_data``: a training stream that can stop after any batch and continue exactly there.
"""
