"""benchmarks/guidance_color.py's measure on synthetic image pairs: the object is read where the unguided
image has it, so a background tinted blue is not an object moved, and a circle must stay where it was."""
import sys

import numpy as np
import pytest

from benchmarks.guidance_color import main, read_seed

GREY, RED, BLUE = (128, 128, 128), (214, 40, 40), (40, 85, 220)


def _disc(centre=(32, 32), radius=12, colour=RED, background=GREY) -> np.ndarray:
    ys, xs = np.mgrid[:64, :64]
    image = np.empty((64, 64, 3), np.uint8)
    image[:] = background
    image[(ys - centre[1]) ** 2 + (xs - centre[0]) ** 2 <= radius ** 2] = colour
    return image


def test_an_unchanged_pair_reads_no_shift_and_a_kept_circle():
    reading = read_seed(_disc(), _disc())
    assert reading.has_object and reading.circle_kept and reading.round_region and reading.overlap == 1
    assert abs(reading.shift) < 1e-6 and not reading.moved and reading.background_saturation_change == 0


def test_a_background_tinted_blue_is_no_shift_of_the_object():
    reading = read_seed(_disc(), _disc(background=(60, 90, 200)))
    assert abs(reading.shift) < 1 and not reading.moved
    assert reading.background_saturation_change > 0.5 and reading.background_saturated_after == 1.0
    assert abs(reading.background_hue_after - 225) < 10
    assert reading.circle_kept and not reading.round_region   # the blue background merges with the object


def test_an_object_recoloured_blue_reads_the_shift_and_keeps_the_circle():
    reading = read_seed(_disc(), _disc(colour=BLUE))
    assert reading.moved and abs(reading.shift - 135) < 3 and abs(reading.hue_after - 225) < 3
    assert reading.circle_kept and abs(reading.background_saturation_change) < 1e-6


def test_a_circle_elsewhere_or_a_square_in_place_is_not_kept():
    moved_away = read_seed(_disc(), _disc(centre=(14, 14), radius=10, colour=BLUE))
    assert not moved_away.circle_kept and not moved_away.round_region and moved_away.overlap == 0
    square = _disc(colour=GREY)
    square[18:47, 18:47] = BLUE
    assert not read_seed(_disc(), square).circle_kept


def test_a_seed_without_an_unguided_object_counts_as_not_moved_and_not_kept():
    reading = read_seed(_disc(colour=GREY), _disc(colour=BLUE))
    assert not reading.has_object and not reading.moved and not reading.circle_kept


def test_a_prompt_without_a_circle_is_refused_before_any_model_loads(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["guidance_color.py", "--prompt", "a red square"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "--prompt must ask for a circle" in capsys.readouterr().err
