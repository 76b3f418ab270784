"""benchmarks/edit_inversion.py on ground-truth renders. The ceiling measure (``--txt2img``): a model
that draws exactly what the prompt says reads 100%, one that keeps the source colour reads 0%. The edit
measure: an edit that changes nothing keeps every mask and recolours nothing, on the scenes asked for."""
import numpy as np
from PIL import Image

from benchmarks.edit_inversion import edit_cases, report_targets, score_cases, score_targets
from ldm.data.shapes import COLOURS, SHAPES, render_scene, scene_for


class RenderingPipe:
    """Stands in for ``ldm.load("txt2img")``: renders the scene the prompt names (colour shifted by
    ``colour_shift`` palette places), seeded as asked, and records the keywords it was called with."""

    def __init__(self, colour_shift: int = 0):
        self.colour_shift = colour_shift
        self.calls = []

    def __call__(self, prompt, **keywords):
        self.calls.append((prompt, keywords))
        colour, shape = prompt.split()[-2:]
        names = list(COLOURS)
        colour = names[(names.index(colour) + self.colour_shift) % len(names)]
        render = render_scene(scene_for([(colour, shape)], seed=keywords["seed"]))
        return [Image.fromarray((render.image * 255).round().astype(np.uint8))]


def test_cases_swap_each_colour_for_two_others_and_keep_the_shape():
    cases = edit_cases(48)
    assert len(set(cases)) == 48 == len(COLOURS) * len(SHAPES) * 2
    assert all(source != target and shape in SHAPES for source, target, shape in cases)


def test_ceiling_reads_the_drawn_target_and_reports_the_failures(capsys):
    indices = [0, 13, 30]
    faithful = RenderingPipe()
    rows = score_targets(faithful, indices, steps=7, scale=3.0)
    targets = [edit_cases(48)[i] for i in indices]
    assert [(row[0], row[1]) for row in rows] == [(target, shape) for _, target, shape in targets]
    assert all(row[2] == row[0] and row[3] == row[1] for row in rows)
    assert [call[1] for call in faithful.calls] == [dict(seed=i, steps=7, scale=3.0, sampler="ddim", n=1)
                                                    for i in indices]
    report_targets(rows, 7, 3.0, 1.0)
    assert "target colour read: 100.0%   shape read: 100.0%" in capsys.readouterr().out

    report_targets(score_targets(RenderingPipe(colour_shift=-1), indices, steps=7, scale=3.0), 7, 3.0, 1.0)
    printed = capsys.readouterr().out
    assert "target colour read: 0.0%" in printed and printed.count("failed:") == 3


class UnchangedEdit:
    """Stands in for ``ldm.load("edit")``: gives the image back as it came, and records it."""

    def __init__(self):
        self.images = []

    def __call__(self, prompt, image, **keywords):
        self.images.append(np.asarray(image))
        return [image]


def test_an_edit_that_changes_nothing_keeps_every_mask_and_no_colour_on_the_scenes_asked_for():
    indices = [0, 13]
    for offset in (0, 1000):
        pipe = UnchangedEdit()
        rows = score_cases(pipe, indices, {}, scene_offset=offset)
        assert all(row[3] >= 0.8 and row[4] == row[0] != row[1] for row in rows)  # kept, still the source colour
        for index, image in zip(indices, pipe.images):
            source, _, shape = edit_cases(48)[index]
            render = render_scene(scene_for([(source, shape)], seed=index + offset))
            assert np.array_equal(image, (render.image * 255).round().astype(np.uint8))
