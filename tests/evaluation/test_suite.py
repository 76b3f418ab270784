"""Which metrics the inputs allow, the shapes scores of a prompt file, the results table."""
import numpy as np
import pytest

from ldm.data.shapes import render_scene, scene_for
from ldm.evaluation import suite
from ldm.evaluation.fidelity import GaussianStats
from ldm.evaluation.image_sets import SampleArray
from ldm.inference.errors import UsageError

STATS = GaussianStats(np.zeros(2), np.eye(2))
IMAGES = SampleArray(None, (4, 8, 8, 3))


def test_default_metrics_are_those_the_inputs_allow():
    assert suite.default_metrics(IMAGES, IMAGES, clip=False) == ["fid", "kid", "is", "pr"]
    assert suite.default_metrics(IMAGES, STATS, clip=True) == ["fid", "is", "clip"]
    assert suite.default_metrics(IMAGES, None, clip=False) == ["is"]


@pytest.mark.parametrize("metrics, generated, reference, message", [
    (["fid"], IMAGES, None, "compares two sets"),
    (["kid"], IMAGES, STATS, "needs images"),
    (["is"], STATS, IMAGES, "needs images"),
    (["clip"], STATS, None, "generated images"),
    (["lpips"], IMAGES, IMAGES, "unknown metric"),
])
def test_metrics_that_lack_their_inputs_are_refused(metrics, generated, reference, message):
    with pytest.raises(UsageError, match=message):
        suite.check_metrics(metrics, generated, reference)


class _Images:
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def batches(self, size):
        for start in range(0, len(self.images), size):
            yield self.images[start:start + size]


def _render(objects, relation=None, seed=0):
    return (render_scene(scene_for(objects, relation, seed=seed)).image * 255).round().astype(np.uint8)


def test_shapes_scores_of_ground_truth_renders_and_of_wrong_prompts():
    images = _Images(np.stack([_render([("red", "circle")]),
                               _render([("blue", "square"), ("green", "star")], "above", seed=1)]))
    right = suite.shapes_metrics(images, ["a red circle", "a blue square above a green star"], batch_size=1)
    assert right == {"shapes_colour": 1.0, "shapes_shape": 1.0, "shapes_position": 1.0, "shapes_all_correct": 1.0}
    wrong = suite.shapes_metrics(images, ["a red star", "a blue square below a green star"], batch_size=2)
    assert wrong == {"shapes_colour": 1.0, "shapes_shape": 0.5, "shapes_position": 0.0, "shapes_all_correct": 0.0}


def test_shapes_scores_refuse_prompts_that_are_not_shapes_captions():
    with pytest.raises(UsageError, match="a photo of a cat"):
        suite.shapes_metrics(_Images(np.zeros((1, 8, 8, 3), np.uint8)), ["a photo of a cat"], batch_size=1)


def test_prompts_must_be_one_per_image(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red circle\n\na blue star\n")
    assert suite.read_prompts(str(tmp_path / "prompts.txt"), 2) == ["a red circle", "a blue star"]
    with pytest.raises(UsageError, match="2 prompts for 3 images"):
        suite.read_prompts(str(tmp_path / "prompts.txt"), 3)


def test_the_table_has_one_row_per_number():
    table = suite.format_table({"fid": 12.3456, "kid_mean": 0.0012345, "kid_subset_size": 1000,
                                "shapes_colour": 0.875})
    assert table.splitlines() == ["| metric | value |", "|---|---|", "| FID | 12.3456 |", "| KID (mean) | 0.001234 |",
                                  "| KID subset size | 1000 |", "| shapes: colour accuracy | 87.5% |"]
