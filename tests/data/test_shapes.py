"""The shapes world: determinism, output keys and ranges, captions, held-out pairs, relations,
masks, crops and bad parameters."""
import numpy as np
import pytest

from ldm.data.base import DatasetError
from ldm.data.shapes import (
    COLOURS,
    HELD_OUT_COMBINATIONS,
    RELATIONS,
    SHAPES,
    VOCABULARY,
    Scene,
    ShapeObject,
    ShapesDataset,
    caption_of,
    combinations,
    estimate_disparity,
    noun_phrase,
    relation_holds,
    render_scene,
    scene_for,
)


def _same_example(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key] == b[key]


def test_an_example_depends_only_on_seed_split_and_index():
    first, second = ShapesDataset(length=50, seed=3), ShapesDataset(length=50, seed=3)
    _same_example(first[17], second[17])
    _same_example(first[17], first[17 - 50])  # negative indices wrap
    assert first[17]["txt"] != first[18]["txt"] or not np.array_equal(first[17]["image"], first[18]["image"])
    other_seed = ShapesDataset(length=50, seed=4)[17]
    assert not np.array_equal(first[17]["image"], other_seed["image"])


def test_examples_have_the_keys_and_ranges_the_task_models_read():
    example = ShapesDataset(length=4, size=64)[0]
    assert example["image"].shape == (64, 64, 3) and example["image"].dtype == np.float32
    assert example["image"].min() >= -1.0 and example["image"].max() <= 1.0
    assert example["jpg"] is example["image"] and example["caption"] == example["txt"]
    assert example["depth"].shape == (64, 64) and example["depth"].min() >= 0.2 - 1e-6
    assert example["mask"].shape == (64, 64, 1) and set(np.unique(example["mask"])) <= {0.0, 1.0}
    np.testing.assert_allclose(example["masked_image"], example["image"] * (1.0 - example["mask"]))
    assert example["lr"].shape == (16, 16, 3) and example["lr"].dtype == np.float32
    assert example["segmentation"].shape == (64, 64) and example["segmentation"].max() >= 1


def test_training_never_shows_a_held_out_pair_and_the_test_split_does():
    def pairs(split, n=400):
        data = ShapesDataset(length=n, split=split)
        return {(o.colour, o.shape) for i in range(n) for o in data.scene(i).objects}

    assert not pairs("train") & set(HELD_OUT_COMBINATIONS)
    assert set(HELD_OUT_COMBINATIONS) <= pairs("test")


def test_held_out_pairs_leave_every_colour_and_shape_seen():
    seen = combinations(held_out=False)
    assert {c for c, _ in seen} == set(COLOURS) and {s for _, s in seen} == set(SHAPES)
    assert len(seen) + len(combinations(held_out=True)) == len(COLOURS) * len(SHAPES)


def test_captions_follow_the_templates_and_use_only_the_vocabulary():
    data = ShapesDataset(length=200, split="test")
    for i in range(200):
        scene, caption = data.scene(i), data[i]["txt"]
        assert set(caption.split()) <= set(VOCABULARY)
        if len(scene.objects) == 2:
            assert caption == (f"{noun_phrase(scene.objects[0].colour, scene.objects[0].shape)} {scene.relation} "
                               f"{noun_phrase(scene.objects[1].colour, scene.objects[1].shape)}")
        else:
            assert caption.endswith(f"{scene.objects[0].colour} {scene.objects[0].shape}")


def test_noun_phrases_use_an_before_vowels_and_name_only_small_and_large():
    assert noun_phrase("orange", "star") == "an orange star"
    assert noun_phrase("green", "triangle", "small") == "a small green triangle"
    assert noun_phrase("red", "circle", "medium") == "a red circle"


def test_two_object_scenes_hold_their_relation_with_different_colours():
    data = ShapesDataset(length=200, split="train", two_object_p=1.0)
    relations = set()
    for i in range(200):
        scene = data.scene(i)
        first, second = scene.objects
        assert first.colour != second.colour
        assert relation_holds(scene.relation, (first.cx, first.cy), (second.cx, second.cy))
        relations.add(scene.relation)
    assert relations == set(RELATIONS)


def test_a_subset_of_relations_restricts_the_two_object_captions():
    data = ShapesDataset(length=100, split="train", two_object_p=1.0, relations=["above", "to the left of"])
    scenes = [data.scene(i) for i in range(100)]
    assert {scene.relation for scene in scenes} == {"above", "to the left of"}
    for scene in scenes:
        first, second = scene.objects
        assert first.cy < second.cy if scene.relation == "above" else first.cx < second.cx


def test_repeating_a_relation_weights_it():
    data = ShapesDataset(length=400, split="train", two_object_p=1.0, relations=["above"] * 3 + ["below"])
    share_above = np.mean([data.scene(i).relation == "above" for i in range(400)])
    assert 0.65 < share_above < 0.85


def test_relation_holds_reads_image_coordinates():
    assert relation_holds("above", (10, 5), (10, 40)) and not relation_holds("below", (10, 5), (10, 40))
    assert relation_holds("to the left of", (5, 30), (40, 32))
    assert not relation_holds("to the left of", (5, 0), (10, 60))  # mostly vertical: not "left of"


def test_objects_stay_inside_the_image():
    data = ShapesDataset(length=300, split="test")
    for i in range(300):
        edges = [row for row in data[i]["segmentation"][[0, -1]]] + [data[i]["segmentation"][:, [0, -1]].T]
        assert all(not np.any(e) for e in edges)


def test_render_draws_each_object_in_its_colour_over_the_background():
    obj = ShapeObject("square", "blue", "large", 32.0, 32.0, 15.0, COLOURS["blue"])
    scene = Scene((obj,), None, ((128, 128, 128), (128, 128, 128)), "none")
    render = render_scene(scene)
    np.testing.assert_allclose(render.image[32, 32], np.array(COLOURS["blue"]) / 255.0, atol=1e-6)
    np.testing.assert_allclose(render.image[1, 1], [128 / 255.0] * 3, atol=1e-6)
    area = render.alphas[0].sum()
    assert abs(area / (2 * 0.85 * 15.0) ** 2 - 1.0) < 0.03  # PIL fills edge pixels too


def test_depth_marks_objects_nearer_than_the_floor_and_can_be_recovered_from_the_image():
    render = render_scene(scene_for([("red", "circle"), ("blue", "star")], "above", seed=1))
    inside = render.alphas.sum(axis=0) > 0.99
    floor_row = np.linspace(0.2, 0.5, 64)[:, None].repeat(64, axis=1)
    np.testing.assert_allclose(render.depth[inside], floor_row[inside] + 0.5, atol=1e-5)
    np.testing.assert_allclose(render.depth[~(render.alphas.sum(axis=0) > 0)], floor_row[render.alphas.sum(0) == 0])
    recovered = estimate_disparity(render.image)
    assert np.mean(np.abs(recovered - render.depth)) < 0.01


def test_inpainting_masks_are_boxes_around_an_object_or_random_rectangles():
    data = ShapesDataset(length=100, split="train", mask_object_p=1.0)
    for i in range(20):
        mask, segmentation = data[i]["mask"][..., 0], data[i]["segmentation"]
        ys, xs = np.nonzero(mask)
        assert mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()  # one filled rectangle
        assert any(np.all(mask[segmentation == k] == 1) for k in range(1, segmentation.max() + 1))


def test_crops_cut_every_map_to_the_same_square():
    full, cropped = ShapesDataset(length=5, seed=2), ShapesDataset(length=5, seed=2, crop_size=32)
    a, b = full[3], cropped[3]
    assert b["image"].shape == (32, 32, 3) and b["lr"].shape == (8, 8, 3) and b["mask"].shape == (32, 32, 1)
    found = [(y, x) for y in range(0, 33, 4) for x in range(0, 33, 4)
             if np.array_equal(a["image"][y:y + 32, x:x + 32], b["image"])]
    assert found
    y, x = found[0]
    np.testing.assert_array_equal(a["depth"][y:y + 32, x:x + 32], b["depth"])
    np.testing.assert_array_equal(a["lr"][y // 4:y // 4 + 8, x // 4:x // 4 + 8], b["lr"])


def test_scene_for_builds_the_prompted_objects():
    scene = scene_for([("yellow", "star"), ("purple", "square")], "to the right of", seed=5)
    assert [(o.colour, o.shape) for o in scene.objects] == [("yellow", "star"), ("purple", "square")]
    assert caption_of(scene) == "a yellow star to the right of a purple square"
    with pytest.raises(ValueError, match="relation"):
        scene_for([("red", "star"), ("blue", "circle")], "behind")


@pytest.mark.parametrize("kwargs, message", [
    (dict(split="holdout"), "split must be one of"),
    (dict(length=0), "length must be at least 1"),
    (dict(size=30), "size must be a multiple of 4"),
    (dict(two_object_p=1.5), "two_object_p must be in"),
    (dict(crop_size=30), "crop_size must be a multiple of 4"),
    (dict(relations=["under"]), "relations must be a non-empty list of above"),
    (dict(relations=[]), "relations must be a non-empty list"),
    (dict(style="outline"), "style must be one of default, dark"),
    (dict(style=["default", "outline"]), "style must be one of default, dark or a list of them"),
    (dict(style=[]), "style must be one of default, dark"),
])
def test_bad_parameters_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(DatasetError, match=message):
        ShapesDataset(**kwargs)


def test_out_of_range_index_raises_index_error():
    with pytest.raises(IndexError):
        ShapesDataset(length=3)[3]


def test_dark_style_draws_the_same_scenes_on_near_black_backgrounds():
    default, dark = ShapesDataset(length=8), ShapesDataset(length=8, style="dark")
    for i in range(8):
        a, b = default[i], dark[i]
        assert a["txt"] == b["txt"] and default.scene(i).objects == dark.scene(i).objects
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        alphas = render_scene(dark.scene(i)).alphas
        background = alphas.sum(axis=0) == 0
        dark_values = ((b["image"] + 1) / 2).max(axis=-1)[background]
        default_values = ((a["image"] + 1) / 2).max(axis=-1)[background]
        assert dark_values.max() <= 0.05 + 1 / 255 and default_values.min() >= 0.12 - 1 / 255
        inside = alphas.max(axis=0) == 1.0
        assert inside.any()
        np.testing.assert_array_equal(a["image"][inside], b["image"][inside])


def test_a_list_of_styles_takes_turns_over_the_same_scenes():
    mixed = ShapesDataset(length=6, style=["default", "dark"])
    default, dark = ShapesDataset(length=6), ShapesDataset(length=6, style="dark")
    for i in range(6):
        expected = (default, dark)[i % 2][i]
        np.testing.assert_array_equal(mixed[i]["image"], expected["image"])
        assert mixed[i]["txt"] == expected["txt"]
