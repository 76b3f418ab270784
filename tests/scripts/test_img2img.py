"""scripts/img2img.py end to end on a tiny random-weight model."""
import numpy as np
from PIL import Image

from tests.scripts.helpers import files_under, main_exit_code, png_parameters, run_script, write_test_image


def test_img2img_writes_images_of_the_input_size_reproducible_per_seed(tiny_models, tmp_path, capsys):
    init = write_test_image(tmp_path / "in.png", size=(34, 27))  # rounded down to 32x24
    model = tiny_models["txt2img"].flags()
    common = ["--init-img", str(init), "--prompt", "a blue square", "--strength", "0.5", "--steps", "4",
              "--n_iter", "1", "--outdir", str(tmp_path / "out"), *model]
    batch = run_script("img2img.py", *common, "--n_samples", "2", "--seed", "7")
    assert batch.returncode == 0, batch.stderr
    assert main_exit_code("img2img.py", [*common, "--n_samples", "1", "--seed", "8"]) == 0, capsys.readouterr().err

    written = [p.relative_to(tmp_path / "out").as_posix() for p in files_under(tmp_path / "out")]
    assert written == ["grid-0000.png", "grid-0001.png", "samples/00000.png", "samples/00001.png",
                       "samples/00002.png"]
    samples = tmp_path / "out" / "samples"
    assert Image.open(samples / "00000.png").size == (32, 24)
    parsed = png_parameters(samples / "00001.png")
    assert (parsed["Prompt"], parsed["Seed"], parsed["Size"], parsed["Sampler"]) == ("a blue square", "8", "32x24", "DDIM")
    assert float(parsed["Denoising strength"]) == 0.5 and parsed["Steps"] == "4"
    # seed 8 made alone (in this process) equals seed 8 made second in a batch (in a subprocess)
    # seed 8 made alone (in this process) matches seed 8 made second in a batch (in a subprocess) up
    # to float rounding across processes (at most one 8-bit level on a few pixels)
    assert png_parameters(samples / "00001.png") == png_parameters(samples / "00002.png")
    alone, in_batch = (np.asarray(Image.open(samples / name)).astype(int) for name in ("00002.png", "00001.png"))
    assert np.abs(alone - in_batch).max() <= 1 and (alone != in_batch).mean() < 0.01
    first, second = (np.asarray(Image.open(samples / f"0000{i}.png")).astype(int) for i in (0, 1))
    assert np.abs(first - second).mean() > 1.0
