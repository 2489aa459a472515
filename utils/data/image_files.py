"""Image files for the ImageFolder data sets (ImageNet's ``train/<class>/``): timm's ``ImageDataset`` with two
changes, both to turn a silent wrong result or a traceback into something else.

- 16-bit greyscale images (PNG ``I;16``, also ``I;16B``/``I;16L`` and 32-bit ``I``) are scaled to 8 bits
  (``value / 257``, so 65535 is 255). Pillow's ``convert('RGB')``, which timm calls, clips them instead: every value
  above 255, i.e. nearly every pixel of a 16-bit image, becomes white. Float images (``F``) have no agreed range and
  are refused, naming the file.
- timm skips an image it cannot decode (a warning, then the next sample in its place) and raises a bare
  ``RuntimeError`` after ``TIMM_DATASET_MAX_RETRIES`` (10) undecodable images in a row, a traceback from a loader
  worker. That skipping is kept (it is what the published runs did), and the ``RuntimeError`` becomes a
  :class:`~utils.errors.DataError` naming the files. The loop is written here rather than inherited because timm's
  ``__getitem__`` converts the image inside it, with no hook for the 16-bit case.
"""
import logging
import os

import numpy as np
from PIL import Image
from timm.data import ImageDataset

from utils.errors import DataError

_logger = logging.getLogger(__name__)
SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')


def to_rgb8(img: Image.Image, name: str = 'image') -> Image.Image:
    """``img`` as 8-bit RGB: 16-bit (and 32-bit integer) greyscale scaled by 1/257 rather than clipped; other modes
    through Pillow's ``convert('RGB')``, as timm does."""
    if img.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img, dtype=np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise DataError(f'{name}: a {img.mode} image with values from {values.min():g} to {values.max():g}, '
                            f'outside the 16-bit range 0..65535 that it is scaled from.\nFix: save it as an 8- or '
                            f'16-bit image.')
        grey = Image.fromarray(np.rint(values / 257).astype(np.uint8), mode='L')
        return grey.convert('RGB')
    if img.mode == 'F':
        raise DataError(f'{name}: a floating-point ({img.mode}) image, whose range is not defined; it cannot be '
                        f'scaled to 8 bits reliably.\nFix: save it as an 8- or 16-bit image (PNG or JPEG).')
    return img.convert('RGB')  # a copy, also for RGB: the pixels are read while the file is open


class ImageFiles(ImageDataset):
    """timm's ``ImageDataset`` over an image folder (its reader, class numbering and retry policy), with the changes
    of the module docstring."""

    def __init__(self, root: str, **kwargs):
        super().__init__(root, input_img_mode='RGB', **kwargs)

    def __getitem__(self, index):
        failures = []
        for _ in range(self._max_retries):
            name = self.reader.filename(index, absolute=True)
            try:
                file, target = self.reader[index]
                with file if hasattr(file, 'close') else open(file, 'rb') as f:
                    img = Image.open(f)
                    img = to_rgb8(img, name)  # decodes the pixels, so decode errors surface here
                break
            except (IOError, OSError, SyntaxError, ValueError) as e:  # Pillow's decode errors
                _logger.warning(f'Skipped sample (index {index}). {e}')
                failures.append(f'{name} ({e})')
                index = (index + 1) % len(self.reader)
        else:
            shown = '\n  '.join(failures[:5])
            raise DataError(f'{len(failures)} images in a row cannot be read (timm skips an unreadable image, but '
                            f'stops after {self._max_retries}):\n  {shown}\nFix: replace or remove these files (a '
                            f'damaged copy, or not images).')
        if self.transform is not None:
            img = self.transform(img)
        if target is None:
            target = -1
        elif self.target_transform is not None:
            target = self.target_transform(target)
        return img, target
