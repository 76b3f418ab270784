"""The shapes detector: components, hull areas, features of ideal shapes, and its accuracy on
ground-truth renders of every colour, shape and size."""
import numpy as np
import pytest

from ldm.data.shapes import COLOURS, SHAPES, render_scene, scene_for
from ldm.evaluation.detector import (
    classify_shape,
    connected_components,
    convex_hull_area,
    detect_objects,
    nearest_palette_colour,
    shape_features,
)


def test_connected_components_separate_blobs_and_join_diagonal_neighbours():
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:3, 1:3] = True
    mask[3, 3] = True          # touches the first blob diagonally
    mask[6:8, 5:8] = True
    labels = connected_components(mask)
    assert labels.max() == 2
    assert labels[1, 1] == labels[3, 3] != labels[7, 7]
    assert (labels == 0).sum() == (~mask).sum()


def test_convex_hull_area_of_a_square_with_inner_points():
    points = np.array([[0, 0], [4, 0], [4, 4], [0, 4], [2, 2], [1, 3]], dtype=float)
    assert convex_hull_area(points) == pytest.approx(16.0)


def test_a_filled_rectangle_has_fill_and_solidity_one():
    component = np.zeros((20, 20), dtype=bool)
    component[3:15, 5:12] = True
    assert shape_features(component) == pytest.approx((1.0, 1.0))


@pytest.mark.parametrize("fill, solidity, shape", [(1.0, 1.0, "square"), (0.79, 0.99, "circle"),
                                                   (0.5, 0.98, "triangle"), (0.43, 0.62, "star")])
def test_ideal_features_classify_as_their_shape(fill, solidity, shape):
    assert classify_shape(fill, solidity) == shape


def test_palette_colours_map_to_themselves():
    from ldm.evaluation.detector import PALETTE_HUES
    assert list(np.array(list(COLOURS))[nearest_palette_colour(np.array(list(PALETTE_HUES.values())))]) == \
        list(COLOURS)
    assert list(COLOURS)[nearest_palette_colour(np.array(355.0))] == "red"  # hue wraps around


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_every_colour_and_shape_is_detected_on_renders(size):
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        image = render_scene(scene_for([(colour, shape)], seed=i, size=size)).image
        objects = detect_objects(image)
        assert len(objects) == 1, (colour, shape, objects)
        assert (objects[0].colour, objects[0].shape) == (colour, shape)


def test_two_objects_are_found_with_their_centroids():
    scene = scene_for([("orange", "triangle"), ("blue", "circle")], "to the left of", seed=3)
    objects = {o.colour: o for o in detect_objects(render_scene(scene).image)}
    assert set(objects) == {"orange", "blue"}
    for obj in scene.objects:
        found = objects[obj.colour]
        assert found.shape == obj.shape
        assert abs(found.cx - (obj.cx - 0.5)) < 1.5  # pixel centres sit at k + 0.5 on the canvas


def test_a_plain_background_holds_no_objects():
    grey = np.full((64, 64, 3), 0.5, dtype=np.float32)
    assert detect_objects(grey) == []
    with pytest.raises(ValueError, match="RGB"):
        detect_objects(np.zeros((64, 64)))
