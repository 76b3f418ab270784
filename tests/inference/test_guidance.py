"""Loss-guidance presets: the colour loss pulls samples toward the target colour."""
import numpy as np
import pytest
import torch
from PIL import Image

import ldm
from ldm.inference.errors import UsageError
from ldm.inference.guidance import color_guidance
from ldm.models.diffusion.samplers import get_sampler
from tests.models.diffusion.gaussian_analytic import GaussianDataModel
from tests.scripts.helpers import files_under, main_exit_code, png_parameters, write_test_image


def test_color_guidance_pulls_each_channel_toward_the_target():
    """On a pixel-space Gaussian model (x0 is the image in [-1, 1]), guiding toward blue
    raises the blue channel and lowers red and green, for an eps and a v model alike."""
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for parameterization in ("eps", "v"):
        model = GaussianDataModel(data_std=0.5, parameterization=parameterization, interpolation="log_sigma")
        plain = get_sampler("euler", model).sample(20, 2, (3, 4, 4), None, x_T=x_T, verbose=False)[0]
        guided = get_sampler("euler", model).sample(20, 2, (3, 4, 4), None, x_T=x_T, verbose=False,
                                                    cond_fn=color_guidance(model, (0., 0., 1.), 2.))[0]
        shift = (guided - plain).mean((0, 2, 3))
        assert shift[2] > 0.05 and shift[0] < -0.05 and shift[1] < -0.05


def test_color_guidance_refuses_a_bad_colour():
    with pytest.raises(ValueError, match="three numbers in \\[0, 1\\]"):
        color_guidance(GaussianDataModel(), (0., 255., 0.), 1.)


# --- --guide-color / --guide-scale on txt2img and img2img, script and API -------------------------
@pytest.fixture(scope="module")
def txt2img(tiny_models):
    model = tiny_models["txt2img"]
    return ldm.load("txt2img", ckpt=str(model.ckpt), config=str(model.config), device="cpu")


def _pixels(images):
    return np.stack([np.asarray(image) for image in images])


def test_the_api_makes_the_scripts_guided_images_and_records_the_guidance(txt2img, tmp_path, capsys):
    flags = ["--prompt", "a red circle", "--steps", "4", "--scale", "3.0", "--seed", "4", "--n_samples", "2",
             "--n_iter", "1", "--guide-color", "40,85,220", "--guide-scale", "5000",
             "--config", txt2img.settings.config, "--ckpt", txt2img.settings.ckpt,
             "--outdir", str(tmp_path), "--skip_grid"]
    assert main_exit_code("txt2img.py", flags) == 0, capsys.readouterr().err
    written = files_under(tmp_path)
    images = txt2img("a red circle", steps=4, scale=3.0, seed=4, n=2, guide_color=(40, 85, 220), guide_scale=5000)
    plain = txt2img("a red circle", steps=4, scale=3.0, seed=4, n=2)
    assert np.array_equal(_pixels(images), _pixels([Image.open(path) for path in written]))
    assert not np.array_equal(_pixels(images), _pixels(plain))
    parameters = png_parameters(written[0])
    assert parameters["Guidance color"] == "40,85,220" and parameters["Guidance scale"] == "5000.0"
    assert "Guidance" not in plain[0].info["parameters"]


@pytest.mark.parametrize("task", ["txt2img", "img2img"])
def test_guide_scale_zero_changes_no_pixel(task, tiny_models, tmp_path):
    model = tiny_models["txt2img"]
    pipe = ldm.load(task, ckpt=str(model.ckpt), config=str(model.config), device="cpu")
    extra = {} if task == "txt2img" else {"image": write_test_image(tmp_path / "in.png", size=(32, 32), seed=1)}
    plain = pipe("a red circle", steps=4, scale=3.0, seed=2, n=2, **extra)
    zero = pipe("a red circle", steps=4, scale=3.0, seed=2, n=2, guide_color="40,85,220", guide_scale=0, **extra)
    guided = pipe("a red circle", steps=4, scale=3.0, seed=2, n=2, guide_color="40,85,220", guide_scale=5000, **extra)
    assert np.array_equal(_pixels(plain), _pixels(zero))
    assert not np.array_equal(_pixels(plain), _pixels(guided))


@pytest.mark.parametrize("flags, message", [
    (["--guide-color", "40,85"], "--guide-color must be three whole numbers 0-255 as R,G,B"),
    (["--guide-color", "40,85,300"], "--guide-color must be three whole numbers 0-255"),
    (["--guide-color", "red"], "--guide-color must be three whole numbers 0-255"),
    (["--guide-color", "0,0,255", "--guide-scale", "-1"], "--guide-scale must be a finite number >= 0"),
    (["--guide-color", "0,0,255", "--guide-scale", "nan"], "--guide-scale must be a finite number >= 0"),
])
def test_a_bad_guidance_value_is_one_line_and_exit_2(flags, message, txt2img, tmp_path, capsys):
    code = main_exit_code("txt2img.py", [*flags, "--config", txt2img.settings.config, "--ckpt", txt2img.settings.ckpt,
                                         "--outdir", str(tmp_path / "out"), "--steps", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_bad_guidance_value_from_the_api_raises_the_same_message(txt2img):
    with pytest.raises(UsageError, match="--guide-color must be three whole numbers"):
        txt2img("a red circle", steps=2, guide_color=(40, 85, 2.5))
