"""benchmarks/lora_style.py's measure on ground-truth renders: dark renders show the style with full
adherence, default renders do not show it."""
import numpy as np

from benchmarks.lora_style import format_rows, measure
from ldm.data.shapes import render_scene, scene_for, styled
from ldm.evaluation.adherence import single_object_cases, two_object_cases


def test_measure_reads_the_style_and_the_adherence_of_renders():
    cases = single_object_cases(1) + two_object_cases(8, held_out=False)
    scenes = [scene_for(case.objects, case.relation, seed=i) for i, case in enumerate(cases)]
    default = np.stack([render_scene(scene).image for scene in scenes])
    dark = np.stack([render_scene(styled(scene, "dark")).image for scene in scenes])
    rows = {"default": measure(cases, default), "dark": measure(cases, dark)}
    assert rows["dark"]["dark style"] == 1.0 and rows["default"]["dark style"] == 0.0
    assert rows["dark"]["background value"] < 0.06 < 0.12 < rows["default"]["background value"]
    assert all(rows["dark"][key] >= 0.95 for key in ("single/colour", "single/shape", "two/colour", "two/shape"))
    table = format_rows(rows)
    assert table.splitlines()[0].startswith("| model | dark style | background value | single/colour")
    assert "| dark | 100.0% |" in table
