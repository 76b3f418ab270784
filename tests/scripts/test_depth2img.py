"""scripts/depth2img.py end to end with a depth map given as an image."""
import numpy as np
from PIL import Image

from tests.scripts.helpers import files_under, main_exit_code, png_parameters, run_script, write_test_image


def _depth_map(path, size=(32, 32), flip=False):
    ramp = np.tile(np.linspace(0, 255, size[0]).astype(np.uint8), (size[1], 1))
    Image.fromarray(ramp[:, ::-1] if flip else ramp).save(path)
    return path


def test_depth2img_writes_images_and_the_depth_map_matters(tiny_models, tmp_path, capsys):
    init = write_test_image(tmp_path / "in.png")
    common = ["--init-img", str(init), "--strength", "1.0", "--steps", "4", "--seed", "5",
              *tiny_models["depth"].flags()]
    run = run_script("depth2img.py", *common, "--depth", str(_depth_map(tmp_path / "d.png")),
                     "--outdir", str(tmp_path / "a"))
    assert run.returncode == 0, run.stderr
    assert main_exit_code("depth2img.py", [*common, "--depth", str(_depth_map(tmp_path / "f.png", flip=True)),
                                           "--outdir", str(tmp_path / "b")]) == 0, capsys.readouterr().err
    sample_a, sample_b = (tmp_path / name / "samples" / "00000.png" for name in ("a", "b"))
    assert [p.name for p in files_under(tmp_path / "a")] == ["grid-0000.png", "00000.png"]
    parsed = png_parameters(sample_a)
    assert (parsed["Seed"], parsed["Size"], float(parsed["Denoising strength"])) == ("5", "32x32", 1.0)
    a, b = (np.asarray(Image.open(p)).astype(int) for p in (sample_a, sample_b))
    assert np.abs(a - b).mean() > 0.5
