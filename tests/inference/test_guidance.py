"""Loss-guidance presets: the colour loss pulls samples toward the target colour."""
import numpy as np
import pytest
import torch
from PIL import Image

import ldm
from ldm.inference.errors import UsageError
from ldm.inference.guidance import capped_guidance, color_guidance, color_loss, pixel_distance
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


def _red_square_on_grey():
    """A [1, 3, 8, 8] image in [-1, 1]: mid grey with a saturated red 4 x 4 square, needing gradients."""
    image = torch.zeros(1, 3, 8, 8)
    image[:, 0, 2:6, 2:6], image[:, 1:, 2:6, 2:6] = 0.9, -0.9
    return image.requires_grad_()


def test_the_object_region_pulls_only_the_coloured_object_and_the_image_region_every_pixel():
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 2:6] = True
    gradients = {}
    for region in ("object", "image"):
        image = _red_square_on_grey()
        color_loss((0., 0., 1.), 1., region)(image).backward()
        gradients[region] = image.grad.abs().sum(1)[0]
    assert gradients["object"][inside].min() > 0 and gradients["object"][~inside].max() < 1e-6
    assert gradients["image"][~inside].min() > 0


def test_color_loss_refuses_an_unknown_region():
    with pytest.raises(ValueError, match="guide region must be one of object, image"):
        color_loss((0., 0., 1.), 1., "background")


def test_the_hue_distance_turns_the_chroma_and_leaves_brightness_and_chroma_length_alone():
    """The gradient of the hue distance at a red pixel has no grey-axis part (sum over channels 0:
    the mean brightness stays) and is orthogonal to the pixel's chroma (its length, the
    saturation, stays to first order); a step down the gradient turns the hue toward blue."""
    red = torch.tensor([0.84, 0.14, 0.14]).view(1, 3, 1, 1).requires_grad_()
    blue = (40 / 255, 85 / 255, 220 / 255)
    pixel_distance(red, blue, "hue").sum().backward()
    grad = red.grad.view(3)
    chroma = red.detach().view(3) - red.detach().mean()
    assert abs(float(grad.sum())) < 1e-6 and abs(float(grad @ chroma)) < 1e-6 and grad.norm() > 0.1
    stepped = red.detach() - 0.05 * red.grad
    assert pixel_distance(stepped, blue, "hue") < pixel_distance(red.detach(), blue, "hue")


def test_the_hue_distance_is_zero_at_the_targets_hue_and_for_grey():
    blue = torch.tensor([40, 85, 220]).view(1, 3, 1, 1) / 255
    paler_blue, grey = (blue + 1) / 2, torch.full((1, 3, 1, 1), 0.5)
    for pixels in (blue, paler_blue, grey):
        assert float(pixel_distance(pixels, blue.view(3).tolist(), "hue")) < 1e-6
    assert float(pixel_distance(torch.tensor([0.8, 0.1, 0.1]).view(1, 3, 1, 1), blue.view(3).tolist(), "hue")) > 0.5


def test_color_loss_refuses_a_grey_hue_target_and_an_unknown_space():
    with pytest.raises(ValueError, match="grey guide colour has no hue"):
        color_loss((0.5, 0.5, 0.5), 1., space="hue")
    with pytest.raises(ValueError, match="image-space guide colour space must be rgb or hue"):
        color_loss((0., 0., 1.), 1., space="lab")
    with pytest.raises(ValueError, match="latent_color_loss"):
        color_loss((0., 0., 1.), 1., space="latent")


def test_capped_guidance_scales_a_large_step_down_to_the_cap_and_leaves_a_small_one():
    model = GaussianDataModel()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([900, 900])
    a_t = float(model.alphas_cumprod[900])
    big, small = torch.ones_like(x), torch.ones_like(x) * 1e-3
    big[1] *= 1e-3
    capped = capped_guidance(model, lambda x, t, denoised: big, max_step=0.1)(x, t, x)
    step_rms = ((1 - a_t) ** 0.5 * capped).flatten(1).pow(2).mean(1).sqrt()
    assert torch.allclose(step_rms[0], torch.tensor(0.1, dtype=torch.float64))
    assert torch.equal(capped[1], big[1])
    assert torch.equal(capped_guidance(model, lambda x, t, denoised: small, max_step=0.1)(x, t, x), small)


# --- --guide-color / --guide-scale on txt2img and img2img, script and API -------------------------
@pytest.fixture(scope="module")
def txt2img(tiny_models):
    return tiny_models["txt2img"].load()


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
    assert parameters["Guidance region"] == "image"
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
    (["--guide-color", "0,0,255", "--guide-max-step", "0"], "--guide-max-step must be > 0"),
    (["--guide-color", "0,0,255", "--guide-max-step", "-1"], "--guide-max-step must be a finite number >= 0"),
    (["--guide-color", "90,90,90", "--guide-color-space", "hue"], "--guide-color-space hue needs a colour with a hue"),
    (["--guide-color", "0,0,255", "--guide-keep-layout"], "--guide-keep-layout pulls toward a recoloured latent"),
])
def test_a_bad_guidance_value_is_one_line_and_exit_2(flags, message, txt2img, tmp_path, capsys):
    code = main_exit_code("txt2img.py", [*flags, "--config", txt2img.settings.config, "--ckpt", txt2img.settings.ckpt,
                                         "--outdir", str(tmp_path / "out"), "--steps", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_hue_space_and_the_step_cap_change_the_images_and_are_recorded(txt2img):
    common = dict(steps=4, scale=3.0, seed=4, n=1, guide_color=(40, 85, 220), guide_scale=5000, guide_region="object")
    rgb, hue = txt2img("a red circle", **common), txt2img("a red circle", guide_color_space="hue", **common)
    capped = txt2img("a red circle", guide_color_space="hue", guide_max_step=0.01, **common)
    assert not np.array_equal(_pixels(rgb), _pixels(hue)) and not np.array_equal(_pixels(hue), _pixels(capped))
    assert "Guidance color space: rgb" in rgb[0].info["parameters"]
    assert "Guidance max step" not in rgb[0].info["parameters"]
    assert "Guidance color space: hue, Guidance max step: 0.01" in capped[0].info["parameters"]


def test_a_bad_guidance_value_from_the_api_raises_the_same_message(txt2img):
    with pytest.raises(UsageError, match="--guide-color must be three whole numbers"):
        txt2img("a red circle", steps=2, guide_color=(40, 85, 2.5))
    with pytest.raises(UsageError, match="--guide-region must be one of object, image, got 'sky'"):
        txt2img("a red circle", steps=2, guide_color=(40, 85, 220), guide_region="sky")
    with pytest.raises(UsageError, match="--guide-color-space must be one of rgb, hue, latent, got 'lab'"):
        txt2img("a red circle", steps=2, guide_color=(40, 85, 220), guide_color_space="lab")


def test_latent_colour_guidance_gives_the_same_images_for_the_same_seed(txt2img):
    """The guide colour's latent vector is the swatch's KL posterior mode, not a draw from the global RNG."""
    common = dict(steps=4, scale=3.0, seed=5, n=1, guide_color=(40, 85, 220), guide_color_space="latent",
                  guide_scale=3000)
    assert np.array_equal(_pixels(txt2img("a red circle", **common)), _pixels(txt2img("a red circle", **common)))


# --- --guide-keep-layout: a pass without guidance, then a pull toward it recoloured ------------------
LAYOUT = dict(guide_color=(40, 85, 220), guide_color_space="latent", guide_keep_layout=True)


def test_keep_layout_at_scale_zero_gives_the_unguided_images_and_by_default_pulls_at_3000(txt2img):
    common = dict(steps=4, scale=3.0, seed=5, n=2)
    plain = txt2img("a red circle", **common)
    zero = txt2img("a red circle", guide_scale=0, **LAYOUT, **common)
    guided = txt2img("a red circle", **LAYOUT, **common)
    assert np.array_equal(_pixels(plain), _pixels(zero))  # the first pass draws no noise of the second
    assert not np.array_equal(_pixels(plain), _pixels(guided))
    assert np.array_equal(_pixels(guided), _pixels(txt2img("a red circle", guide_scale=3000, **LAYOUT, **common)))
    assert ("Guidance scale: 3000.0, Guidance region: image, Guidance color space: latent, Guidance keeps layout: "
            "True") in guided[0].info["parameters"]
    assert "Guidance scale: 300.0" in txt2img("a red circle", guide_color=(40, 85, 220), **common)[0].info["parameters"]


def test_keep_layout_refuses_other_spaces_the_object_region_and_img2img(txt2img, tiny_models, tmp_path):
    with pytest.raises(UsageError, match="--guide-keep-layout pulls toward a recoloured latent: it needs "
                                         "--guide-color-space latent, got 'rgb'"):
        txt2img("a red circle", steps=2, guide_color=(40, 85, 220), guide_keep_layout=True)
    with pytest.raises(UsageError, match="leave --guide-region out \\(got 'object'\\)"):
        txt2img("a red circle", steps=2, guide_region="object", **LAYOUT)
    model = tiny_models["txt2img"]
    img2img = ldm.load("img2img", ckpt=str(model.ckpt), config=str(model.config), device="cpu")
    with pytest.raises(UsageError, match="--guide-keep-layout works in txt2img only"):
        img2img("a red circle", steps=2, image=write_test_image(tmp_path / "in.png", size=(32, 32), seed=1), **LAYOUT)


def test_keep_layout_turns_the_shipped_models_red_circle_blue_where_it_was():
    """The shipped shapes model, seeds 0 and 1 (both kept in benchmarks/guidance_color.py --keep-layout):
    the guided image shows a blue circle over the unguided red circle's pixels."""
    from ldm.evaluation.detector import detect_object_masks

    shapes = ldm.load("txt2img", device="cpu")
    common = dict(steps=20, seed=0, n=2)
    plain = shapes("a red circle", **common)
    guided = shapes("a red circle", **LAYOUT, **common)  # the default scale with --guide-keep-layout: 3000
    for before, after in zip(_pixels(plain), _pixels(guided)):
        (red, red_mask), = detect_object_masks(before)
        assert (red.colour, red.shape) == ("red", "circle")
        found = {(found.colour, found.shape): (mask & red_mask).sum() / (mask | red_mask).sum()
                 for found, mask in detect_object_masks(after)}
        assert found.get(("blue", "circle"), 0) >= 0.5, found


# --- CLIP guidance: --guide-clip TEXT with a local transformers CLIP (--guide-clip-model) ------------
@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random transformers CLIPModel (32-pixel images) and the CLIP tokenizer, saved as a
    local directory."""
    from transformers import CLIPConfig, CLIPModel

    from ldm.modules.encoders.tokenizer import build_clip_tokenizer

    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  hidden_act="quick_gelu", projection_dim=16)
    config = CLIPConfig(text_config=dict(vocab_size=49408, max_position_embeddings=77, eos_token_id=49407, **common),
                        vision_config=dict(image_size=32, patch_size=8, **common), projection_dim=16)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_clip")
    CLIPModel(config).save_pretrained(folder)
    build_clip_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def clip_guide(tiny_clip_dir):
    from ldm.inference.guidance import ClipGuide, load_clip

    return ClipGuide(*load_clip(tiny_clip_dir), "a blue square")


def _step_lowers_the_loss(loss_of, x, cond_fn, step=1e-2):
    """A small step along the cond_fn's gradient (minus the loss gradient) lowers each image's loss."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        grad = cond_fn(x, torch.zeros(len(x), dtype=torch.long), x)
    assert grad.abs().flatten(1).amax(1).min() > 0
    moved = x.detach() + step * grad / grad.flatten(1).norm(dim=1).view(-1, *[1] * (x.ndim - 1))
    with torch.no_grad():
        before, after = loss_of(x.detach()), loss_of(moved)
    assert (after < before).all(), (before, after)


def test_clip_guidance_gradient_lowers_the_clip_loss_of_pixels_and_of_decoded_latents(clip_guide, tiny_models):
    from ldm.inference.guidance import clip_guidance

    pixels = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1  # resized and cropped
    _step_lowers_the_loss(clip_guide.loss, pixels, clip_guidance(GaussianDataModel(), clip_guide, 1.))
    model = tiny_models["txt2img"].load().model
    latents = torch.randn(2, model.channels, 8, 8, generator=torch.Generator().manual_seed(1))
    _step_lowers_the_loss(lambda z: clip_guide.loss(model.decode_first_stage(z)), latents,
                          clip_guidance(model, clip_guide, 1.))


def test_clip_pixels_match_clip_preprocessing_of_a_square_image():
    """The differentiable preprocessing: resize to the model's size, CLIP's mean/std."""
    from ldm.inference.guidance import CLIP_MEAN, CLIP_STD, clip_pixels

    image = torch.full((1, 3, 64, 64), 0.5)
    expected = (torch.tensor([0.75] * 3) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    pixels = clip_pixels(image, 32)
    assert pixels.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pixels[0, :, 5, 7], expected)


def test_clip_guidance_moves_a_pixel_models_samples(clip_guide):
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    model = GaussianDataModel(data_std=0.5, parameterization="eps", interpolation="log_sigma")
    from ldm.inference.guidance import clip_guidance

    plain = get_sampler("euler", model).sample(3, 2, (3, 16, 16), None, x_T=x_T, verbose=False)[0]
    guided = get_sampler("euler", model).sample(3, 2, (3, 16, 16), None, x_T=x_T, verbose=False,
                                                cond_fn=clip_guidance(model, clip_guide, 50.))[0]
    assert (guided - plain).abs().amax() > 1e-3
    assert clip_guide.loss(guided.float()).sum() < clip_guide.loss(plain.float()).sum()


def test_the_latent_space_changes_the_images_is_recorded_and_combines_with_clip(txt2img, tiny_clip_dir):
    common = dict(steps=4, scale=3.0, seed=5, n=2, guide_color=(40, 85, 220), guide_region="object")
    plain = txt2img("a red circle", steps=4, scale=3.0, seed=5, n=2)
    latent = txt2img("a red circle", guide_color_space="latent", guide_scale=100, **common)
    zero = txt2img("a red circle", guide_color_space="latent", guide_scale=0, **common)
    both = txt2img("a red circle", guide_color_space="latent", guide_scale=100, guide_clip="a blue square",
                   guide_clip_model=tiny_clip_dir, guide_clip_scale=5000, **common)
    assert not np.array_equal(_pixels(plain), _pixels(latent)) and np.array_equal(_pixels(plain), _pixels(zero))
    assert not np.array_equal(_pixels(latent), _pixels(both))
    assert "Guidance color space: latent" in latent[0].info["parameters"]
    assert "Guidance CLIP: a blue square" in both[0].info["parameters"]


def test_guide_clip_changes_the_images_and_is_recorded(txt2img, tiny_clip_dir):
    common = dict(steps=4, scale=3.0, seed=5, n=2)
    plain = txt2img("a red circle", **common)
    guided = txt2img("a red circle", guide_clip="a blue square", guide_clip_model=tiny_clip_dir,
                     guide_clip_scale=5000, **common)
    zero = txt2img("a red circle", guide_clip="a blue square", guide_clip_model=tiny_clip_dir,
                   guide_clip_scale=0, **common)
    assert not np.array_equal(_pixels(plain), _pixels(guided))
    assert np.array_equal(_pixels(plain), _pixels(zero))
    parameters = guided[0].info["parameters"]
    assert "Guidance CLIP: a blue square" in parameters and "Guidance CLIP scale: 5000.0" in parameters


def test_clip_guided_runs_read_the_clip_model_once(txt2img, tiny_clip_dir, monkeypatch):
    import ldm.modules.encoders.clip_model as clip_model
    from ldm.inference.guidance import load_clip

    calls = []
    real = clip_model.load_local_clip
    monkeypatch.setattr(clip_model, "load_local_clip", lambda directory: calls.append(directory) or real(directory))
    load_clip.cache_clear()
    for seed in (5, 6):
        txt2img("a red circle", steps=2, seed=seed, guide_clip="a blue square", guide_clip_model=tiny_clip_dir,
                guide_clip_scale=10)
    assert calls == [tiny_clip_dir]


@pytest.mark.parametrize("flags, message", [
    (["--guide-clip", "a blue square"], "--guide-clip needs --guide-clip-model DIR"),
    (["--guide-clip", "a blue square", "--guide-clip-model", "{missing}"], "no such directory"),
    (["--guide-clip", "a blue square", "--guide-clip-model", "{empty}"], "not a transformers CLIP model directory"),
    (["--guide-clip", "a blue square", "--guide-clip-model", "{clip}", "--guide-clip-scale", "-2"],
     "--guide-clip-scale must be a finite number >= 0"),
    (["--guide-clip-model", "{clip}"], "--guide-clip-model is only used with --guide-clip"),
])
def test_a_bad_clip_guidance_is_one_line_and_exit_2(flags, message, txt2img, tiny_clip_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    folders = dict(missing=str(tmp_path / "missing"), empty=str(tmp_path / "empty"), clip=tiny_clip_dir)
    flags = [flag.format(**folders) for flag in flags]
    code = main_exit_code("txt2img.py", [*flags, "--config", txt2img.settings.config, "--ckpt", txt2img.settings.ckpt,
                                         "--outdir", str(tmp_path / "out"), "--steps", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
