"""scripts/inpaint.py end to end: with an inpainting (9-channel) model and with a normal model."""
import numpy as np
from PIL import Image

from tests.scripts.helpers import files_under, main_exit_code, png_parameters, run_script, write_test_image


def _mask(path, size=(32, 32)):
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(path)
    return path, mask > 127


def test_inpainting_model_writes_images_with_parameters(tiny_models, tmp_path):
    init = write_test_image(tmp_path / "in.png")
    mask, _ = _mask(tmp_path / "mask.png")
    run = run_script("inpaint.py", "--init-img", str(init), "--mask", str(mask), "--prompt", "a green star",
                     "--steps", "2", "--n_samples", "2", "--seed", "3", "--outdir", str(tmp_path / "out"),
                     *tiny_models["inpaint"].flags())
    assert run.returncode == 0, run.stderr
    written = files_under(tmp_path / "out")
    assert [p.name for p in written] == ["grid-0000.png", "00000.png", "00001.png"]
    parsed = png_parameters(written[1])
    assert (parsed["Prompt"], parsed["Seed"], parsed["Size"], parsed["Inpainting"]) == ("a green star", "3", "32x32", "model")
    assert float(parsed["CFG scale"]) == 10.0


def test_normal_model_keeps_the_unmasked_pixels_exactly(tiny_models, tmp_path, capsys):
    init = write_test_image(tmp_path / "in.png")
    mask, repaint = _mask(tmp_path / "mask.png")
    code = main_exit_code("inpaint.py", ["--init-img", str(init), "--mask", str(mask), "--steps", "2",
                                         "--outdir", str(tmp_path / "out"), *tiny_models["txt2img"].flags()])
    assert code == 0, capsys.readouterr().err
    sample = tmp_path / "out" / "samples" / "00000.png"
    before, after = np.asarray(Image.open(init)).astype(int), np.asarray(Image.open(sample)).astype(int)
    assert np.array_equal(before[~repaint], after[~repaint])
    assert np.abs(before[repaint] - after[repaint]).mean() > 1.0
    assert png_parameters(sample)["Inpainting"] == "latent mask blending"
