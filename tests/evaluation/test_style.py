"""The dark-style measure: renders of the dark style read as dark, default renders do not."""
import numpy as np
import pytest

from ldm.data.shapes import ShapesDataset
from ldm.evaluation.style import DARK_BACKGROUND_MAX, background_value, dark_style_fraction, shows_dark_style


def _renders(style, count=48):
    data = ShapesDataset(length=count, split="test", style=style)
    return [((data[i]["image"] + 1) / 2) for i in range(count)]


def test_the_measure_separates_dark_renders_from_default_ones():
    dark, default = _renders("dark"), _renders("default")
    assert dark_style_fraction(dark) == 1.0 and dark_style_fraction(default) == 0.0
    assert max(background_value(x) for x in dark) < 0.06 < DARK_BACKGROUND_MAX
    assert min(background_value(x) for x in default) > 0.1


def test_uint8_and_float_images_read_alike_and_all_object_images_are_not_dark():
    image = _renders("dark", 1)[0]
    assert background_value(np.round(image * 255).astype(np.uint8)) == pytest.approx(background_value(image), abs=3e-3)
    red = np.zeros((8, 8, 3), np.float32)
    red[..., 0] = 0.9
    assert background_value(red) == 1.0 and not shows_dark_style(red)
    with pytest.raises(ValueError, match="no images"):
        dark_style_fraction([])
