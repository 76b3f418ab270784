"""Class names beside a checkpoint (``<name>.classes.txt``) and ``--classes`` by number or name."""
from pathlib import Path

import pytest

from ldm.data.shapes import CLASS_NAMES
from ldm.inference.class_names import (
    class_names_beside,
    class_names_of,
    class_text,
    default_classes,
    parse_classes,
    read_class_names,
)
from ldm.inference.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
NAMES = ["tench, Tinca tinca", "goldfish", "", "great white shark"]


def test_the_names_file_sits_beside_the_checkpoint_without_its_suffix():
    assert class_names_beside("models/cin/model.ckpt") == Path("models/cin/model.classes.txt")
    assert class_names_beside("checkpoints/shapes-class-conditional.safetensors") == Path(
        "checkpoints/shapes-class-conditional.classes.txt")


def test_the_shipped_class_model_names_its_classes_as_the_shapes_world_does():
    names = read_class_names(REPO / "checkpoints" / "shapes-class-conditional.classes.txt", n_classes=25)
    assert names == list(CLASS_NAMES) and len(names) == 24


def test_classes_are_numbers_or_names_in_any_case_and_spacing():
    assert parse_classes(["3", 1, "GOLDFISH", "  tinca   tinca ", "tench, Tinca tinca"], NAMES, 5) == [3, 1, 1, 0, 0]
    assert parse_classes(2, NAMES, 5) == [2]


@pytest.mark.parametrize("values, message", [
    (["5"], "class 5 is out of range; this model has classes 0 to 4"),
    ([-1], "class -1 is out of range"),
    (["goldfsh"], "unknown class 'goldfsh'; give a number in [0, 4] or a name such as 'tench, Tinca tinca'"),
    ([], "give at least one class"),
    ([1.5], "a class is a number or a name, got 1.5"),
    ([True], "a class is a number or a name, got True"),
])
def test_bad_classes_are_one_line_errors(values, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_classes(values, NAMES, 5)


def test_a_name_without_a_names_file_says_where_names_go():
    with pytest.raises(UsageError, match=r"no class names \(put them in <checkpoint>.classes.txt beside it"):
        parse_classes(["goldfish"], [], 5)


def test_a_name_shared_by_two_classes_asks_for_the_number():
    with pytest.raises(UsageError, match=r"'fish' names several classes \(0, 1\)"):
        parse_classes(["fish"], ["fish, tench", "fish, goldfish"], 3)


def test_names_files_are_read_beside_the_checkpoint_or_where_the_flag_says(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    assert class_names_of(str(ckpt), None, 5) == []
    (tmp_path / "model.classes.txt").write_text("a\nb\n\n\n", encoding="utf-8")
    assert class_names_of(str(ckpt), None, 5) == ["a", "b"]
    (tmp_path / "other.txt").write_text("x\ny\nz\n", encoding="utf-8")
    assert class_names_of(str(ckpt), str(tmp_path / "other.txt"), 5) == ["x", "y", "z"]
    with pytest.raises(UsageError, match="other.txt names 3 classes but the model has 2"):
        class_names_of(str(ckpt), str(tmp_path / "other.txt"), 2)
    with pytest.raises(UsageError, match="--class_names: file not found"):
        class_names_of(str(ckpt), str(tmp_path / "missing.txt"), 5)


def test_default_classes_spread_over_the_classes_without_the_no_class_label():
    assert default_classes(25) == [0, 8, 15, 23]
    assert default_classes(1001) == [0, 333, 666, 999]
    assert default_classes(3) == [0, 1]
    assert default_classes(1) == [0]


def test_a_class_is_written_by_its_first_name_or_its_number():
    assert [class_text(label, NAMES) for label in range(5)] == ["tench", "goldfish", "2", "great white shark", "4"]
    assert parse_classes([class_text(label, NAMES) for label in range(5)], NAMES, 5) == list(range(5))
