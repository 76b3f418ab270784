"""scripts/upscale.py end to end: the output is the autoencoder factor times the input size, with
the SD x4 upscaler and with the latent-diffusion BSR super-resolution model."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

import ldm
from ldm.inference.parsers import complete_model_defaults, default_options
from ldm.inference.sampler_choice import sampler_takes_eta
from tests.scripts.helpers import _save_model, files_under, main_exit_code, png_parameters, run_script, write_test_image
from tests.tiny_configs import tiny_ldm_superres_config


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


# The latent-diffusion BSR model: its original config shrunk by tests.tiny_configs.LDM_SR_TINY_OVERRIDES
# (VQ-f4 first stage, so 4x as the real one; low-resolution sides multiples of 8).
@pytest.fixture(scope="module")
def ldm_sr(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("ldm_sr"), "ldm_sr", tiny_ldm_superres_config().model, seed=5)


def test_the_ldm_bsr_model_upscales_4x_with_its_notebooks_settings(ldm_sr, tmp_path, capsys):
    low_res = write_test_image(tmp_path / "low.png", size=(16, 8))
    out = tmp_path / "out"
    code = main_exit_code("upscale.py", ["--init-img", str(low_res), "--outdir", str(out), *ldm_sr.flags()])
    assert code == 0, capsys.readouterr().err
    sample = out / "samples" / "00000.png"
    assert files_under(out) == [out / "grid-0000.png", sample]
    assert Image.open(sample).size == (64, 32)
    parsed = png_parameters(sample)
    assert (parsed["Prompt"], parsed["Steps"], parsed["Sampler"], parsed["CFG scale"], parsed["Size"]) == \
        ("", "100", "DDIM", "1.0", "64x32")
    assert "Noise level" not in parsed and parsed["Model"] == "ldm_sr"


def test_the_python_api_upscales_as_the_script_does(ldm_sr, tmp_path, capsys):
    low_res = write_test_image(tmp_path / "low.png", size=(8, 8), seed=3)
    out = tmp_path / "out"
    assert main_exit_code("upscale.py", ["--init-img", str(low_res), "--steps", "4", "--seed", "7", "--skip_grid",
                                         "--outdir", str(out), *ldm_sr.flags()]) == 0, capsys.readouterr().err
    pipe = ldm.load("upscale", ckpt=str(ldm_sr.ckpt), config=str(ldm_sr.config), device="cpu")
    images = pipe(image=str(low_res), steps=4, seed=7)
    assert len(images) == 1 and images[0].size == (32, 32)
    written = Image.open(out / "samples" / "00000.png")
    assert np.array_equal(np.asarray(images[0]), np.asarray(written))
    assert images[0].info["parameters"] == written.info["parameters"]
    other = pipe(image=str(low_res), steps=4, seed=8)[0]  # eta 1: every step draws noise from the seed
    assert not np.array_equal(np.asarray(images[0]), np.asarray(other))


@pytest.mark.parametrize("flags, message", [
    (["--noise_level", "20"], "--noise_level: the LDM super-resolution model is conditioned on the low-resolution "
                              r"image only \(no noise augmentation\); leave --noise_level out"),
    (["--prompt", "sharp"], "--prompt: the LDM super-resolution model is conditioned on the low-resolution image "
                            r"only \(no text\); leave --prompt and --from-file out"),
    (["--negative_prompt", "blur"], "--negative_prompt: .* leave --negative_prompt out"),
    (["--scale", "5"], "--scale: .* so there is no classifier-free guidance; leave --scale out"),
    (["--init-img", "missing.png"], "--init-img: file not found: missing.png"),
    ([], "--init-img is required: the low-resolution image to upscale"),
])
def test_bad_inputs_for_the_ldm_bsr_model_are_one_line_and_write_nothing(ldm_sr, tmp_path, capsys, flags, message):
    image = [] if "--init-img" in flags or not flags else ["--init-img", str(write_test_image(tmp_path / "low.png"))]
    out = tmp_path / "out"
    assert main_exit_code("upscale.py", [*image, *flags, "--outdir", str(out), *ldm_sr.flags()]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(f"upscale.py: error: {message}", err[-1])
    assert files_under(out) == []


def test_text_to_image_refuses_the_ldm_bsr_model_naming_the_upscale_script(ldm_sr, tmp_path, capsys):
    assert main_exit_code("txt2img.py", ["--outdir", str(tmp_path / "out"), *ldm_sr.flags()]) == 2
    assert capsys.readouterr().err.strip().endswith("is an LDM super-resolution model; use scripts/upscale.py")


@pytest.mark.parametrize("kind, sampler, expected", [
    ("upscale", "ddim", dict(steps=50, ddim_eta=0.0, scale=9.0, noise_level=20)),  # the SAI demo's, as before
    ("superres", "ddim", dict(steps=100, ddim_eta=1.0, scale=1.0, noise_level=None, prompt="")),
    ("superres", "dpmpp_2m", dict(steps=100, ddim_eta=0.0, scale=1.0)),  # eta only where the sampler takes it
    ("text", "ddim", dict(steps=50, ddim_eta=0.0, scale=9.0, noise_level=20)),  # refused later, by the task
])
def test_upscale_defaults_follow_the_model(kind, sampler, expected):
    opt = default_options("upscale")
    complete_model_defaults("upscale", opt, kind, sampler_takes_eta(sampler))
    assert {name: getattr(opt, name) for name in expected} == expected


def test_given_values_are_kept_whatever_the_model():
    opt = default_options("upscale")
    opt.steps, opt.ddim_eta, opt.scale = 7, 0.5, 3.0
    complete_model_defaults("upscale", opt, "superres", sampler_takes_eta("ddim"))
    assert (opt.steps, opt.ddim_eta, opt.scale) == (7, 0.5, 3.0)


def test_the_ldm_bsr_model_samples_inputs_of_128_pixels_and_more_in_the_notebooks_patches(ldm_sr, tmp_path,
                                                                                         monkeypatch):
    pipe = ldm.load("upscale", ckpt=str(ldm_sr.ckpt), config=str(ldm_sr.config), device="cpu")
    seen = []
    denoise_in_patches = pipe.model.apply_model_in_patches
    monkeypatch.setattr(pipe.model, "apply_model_in_patches",
                        lambda *args: seen.append(dict(pipe.model.split_input_params)) or denoise_in_patches(*args))
    # the VQ decoder's attention over a 128x128 patch takes seconds on a CPU: a 4x nearest upsampler instead
    monkeypatch.setattr(pipe.model.first_stage_model, "decode",
                        lambda h, force_not_quantize=False: torch.nn.functional.interpolate(h, scale_factor=4))
    small = pipe(image=str(write_test_image(tmp_path / "small.png", size=(40, 24))), steps=2)[0]
    assert small.size == (160, 96) and seen == []
    large = pipe(image=str(write_test_image(tmp_path / "large.png", size=(130, 140))), steps=2)[0]
    assert large.size == (512, 512)  # sides resized down to multiples of the 64-pixel stride
    assert len(seen) == 2 and seen[0]["ks"] == (128, 128) and seen[0]["stride"] == (64, 64) and seen[0]["vqf"] == 4
    assert not hasattr(pipe.model, "split_input_params")
