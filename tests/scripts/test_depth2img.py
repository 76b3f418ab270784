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


def test_save_depth_writes_the_estimate_as_16_bit_grey_that_reproduces_the_images(tiny_models, tmp_path, capsys):
    init = write_test_image(tmp_path / "in.png")
    common = ["--init-img", str(init), "--strength", "1.0", "--steps", "4", "--seed", "5", "--skip_grid",
              *tiny_models["depth"].flags()]
    saved = tmp_path / "maps" / "d.png"
    assert main_exit_code("depth2img.py", [*common, "--save-depth", str(saved),
                                           "--outdir", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    assert f"also written: {saved}" in capsys.readouterr().out
    with Image.open(saved) as depth:
        assert depth.mode == "I;16" and depth.size == (384, 384)  # MiDaS DPT-Hybrid works at 384x384
        values = np.asarray(depth)
    assert (values.min(), values.max()) == (0, 65535) and len(np.unique(values)) > 100
    assert main_exit_code("depth2img.py", [*common, "--depth", str(saved), "--save-depth", str(tmp_path / "maps"),
                                           "--outdir", str(tmp_path / "b")]) == 0, capsys.readouterr().err
    estimated, given = (np.asarray(Image.open(tmp_path / name / "samples" / "00000.png")).astype(int)
                        for name in ("a", "b"))
    assert np.abs(estimated - given).mean() < 1.0  # the saved map gives the model the same conditioning
    with Image.open(tmp_path / "maps" / "depth-00001.png") as again:  # numbered on in a folder
        assert np.array_equal(np.asarray(again), values)


def test_save_depth_never_overwrites_a_file(tiny_models, tmp_path, capsys):
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"keep me")
    code = main_exit_code("depth2img.py", ["--init-img", str(write_test_image(tmp_path / "in.png")),
                                           "--save-depth", str(taken), "--outdir", str(tmp_path / "out"),
                                           *tiny_models["depth"].flags()])
    assert code == 2
    assert "--save-depth: " in capsys.readouterr().err and taken.read_bytes() == b"keep me"
    assert files_under(tmp_path / "out") == []
