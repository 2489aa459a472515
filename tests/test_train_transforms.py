"""The training transform of the image loaders carries the config's crop, flip and interpolation keys to timm's
transform, read back from the transform objects with values unlike the published ones (the published values are
also timm's defaults, so a loader that dropped a key would pass a test that used them). Written for the mutation
check's 'hflip-fixed' mutant (scripts/mutation_check.py), which no run noticed."""
import pytest
from torchvision import transforms

from helpers import CIFAR10_YML, write_cifar10
from utils.config import load_config
from utils.data.loaders import build_loaders


@pytest.mark.parametrize('hflip', [0.3, 0.0])
def test_crop_flip_and_interpolation_reach_the_training_transform(tmp_path, hflip):
    data = write_cifar10(tmp_path / 'cifar', 4, test=4)
    cfg = load_config(['--data-dir', str(data), '--workers', '0', '--batch-size', '4', '--hflip', str(hflip),
                       '--scale', '0.5', '0.9', '--ratio', '0.8', '1.2', '--interpolation', 'bilinear'], CIFAR10_YML)
    train_loader, _, _ = build_loaders(cfg)
    steps = train_loader.dataset.transform.transforms
    crop = steps[0]
    assert type(crop).__name__ == 'RandomResizedCropAndInterpolation'
    assert (tuple(crop.scale), tuple(crop.ratio)) == ((0.5, 0.9), (0.8, 1.2))
    assert crop.interpolation == transforms.InterpolationMode.BILINEAR
    flips = [step.p for step in steps if isinstance(step, transforms.RandomHorizontalFlip)]
    assert flips == ([hflip] if hflip > 0 else [])  # timm leaves the flip out at probability 0
