"""scripts/upscale.py end to end: the output is the autoencoder factor times the input size."""
from PIL import Image

from tests.scripts.helpers import files_under, png_parameters, run_script, write_test_image


def test_upscale_writes_images_at_the_models_scale(tiny_models, tmp_path):
    low_res = write_test_image(tmp_path / "small.png", size=(16, 12))
    run = run_script("upscale.py", "--init-img", str(low_res), "--noise_level", "30", "--steps", "2",
                     "--prompt", "sharp", "--outdir", str(tmp_path / "out"), *tiny_models["upscale"].flags())
    assert run.returncode == 0, run.stderr
    sample = tmp_path / "out" / "samples" / "00000.png"
    assert sample in files_under(tmp_path / "out")
    assert Image.open(sample).size == (32, 24)  # the tiny autoencoder's factor is 2 (x4 for SD)
    parsed = png_parameters(sample)
    assert (parsed["Prompt"], parsed["Noise level"], parsed["Size"]) == ("sharp", "30", "32x24")
