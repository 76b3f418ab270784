"""``ldm.load(task)(...)``: the Python API is the scripts' generation path (same pixels for the same
options), with the scripts' defaults and one-line errors, on tiny random-weight models."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ldm
from ldm.inference.errors import UsageError
from tests.scripts.helpers import files_under, main_exit_code, png_parameters, write_test_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def pipes(tiny_models):
    """One pipeline per task on the tiny models, loaded once."""
    model_of = {"txt2img": "txt2img", "img2img": "txt2img", "inpaint": "inpaint", "depth2img": "depth",
                "upscale": "upscale"}
    return {task: ldm.load(task, ckpt=str(tiny_models[name].ckpt), config=str(tiny_models[name].config),
                           device="cpu")
            for task, name in model_of.items()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    return {"image": write_test_image(folder / "in.png", size=(32, 32), seed=1),
            "small": write_test_image(folder / "small.png", size=(8, 8), seed=2),
            "depth": write_test_image(folder / "depth.png", size=(32, 32), seed=3, mode="L"),
            "mask": folder / "mask.png"}


def _task_options(task, inputs):
    """(CLI flags, API keywords) of the same request of ``task``."""
    extra = {"img2img": {"init-img": inputs["image"], "strength": 0.6},
             "inpaint": {"init-img": inputs["image"], "mask": inputs["mask"]},
             "depth2img": {"init-img": inputs["image"], "depth": inputs["depth"], "strength": 0.7},
             "upscale": {"init-img": inputs["small"], "noise_level": 30}}.get(task, {})
    flags = ["--prompt", "a red circle", "--negative_prompt", "blue", "--steps", "4", "--scale", "3.0",
             "--seed", "11", "--n_samples", "2", "--n_iter", "1"]
    for name, value in extra.items():
        flags += [f"--{name}", str(value)]
    keywords = dict(negative_prompt="blue", steps=4, scale=3.0, seed=11, n=2)
    keywords.update({("image" if name == "init-img" else name): value for name, value in extra.items()})
    return flags, keywords


@pytest.mark.parametrize("task", ["txt2img", "img2img", "inpaint", "depth2img", "upscale"])
def test_the_api_makes_the_same_pixels_and_parameters_as_the_script(task, pipes, tiny_models, inputs, tmp_path,
                                                                     capsys):
    flags, keywords = _task_options(task, inputs)
    pipe = pipes[task]
    outdir = tmp_path / "out"
    model_flags = ["--config", pipe.settings.config, "--ckpt", pipe.settings.ckpt]
    assert main_exit_code(f"{task}.py", [*flags, *model_flags, "--outdir", str(outdir), "--skip_grid"]) == 0, \
        capsys.readouterr().err
    written = files_under(outdir)
    images = pipe("a red circle", **keywords)
    assert len(images) == len(written) == 2
    for image, path in zip(images, written):
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(path)))
        assert image.info["parameters"] == Image.open(path).info["parameters"]
    assert png_parameters(written[1])["Seed"] == "12"


def test_a_single_prompt_makes_n_images_seeded_one_after_the_other(pipes):
    pipe = pipes["txt2img"]
    together = pipe("a red circle", steps=2, seed=5, n=3)
    alone = pipe("a red circle", steps=2, seed=6, n=1)
    assert [image.info["parameters"].split("Seed: ")[1].split(",")[0] for image in together] == ["5", "6", "7"]
    assert np.abs(np.asarray(together[1], dtype=int) - np.asarray(alone[0], dtype=int)).max() <= 1


def test_a_prompt_list_makes_n_images_of_each_prompt_with_one_input_each(pipes, inputs):
    pipe = pipes["img2img"]
    red = np.zeros((32, 32, 3), dtype=np.uint8)
    red[..., 0] = 255
    images = pipe(["a red circle", "a blue square"], image=[Image.open(inputs["image"]), red], n=2,
                  batch_size=3, steps=4, strength=0.5, seed=0)
    prompts = [image.info["parameters"].splitlines()[0] for image in images]
    assert prompts == ["a red circle"] * 2 + ["a blue square"] * 2
    # the blue-square images start from the red array: more red than the ones from the test image
    reds = [np.asarray(image, dtype=float)[..., 0].mean() for image in images]
    assert min(reds[2:]) > max(reds[:2])


def test_img2img_with_eta_draws_its_step_noise_from_each_images_seed(pipes, inputs):
    pipe = pipes["img2img"]
    options = dict(image=str(inputs["image"]), steps=4, strength=0.9, eta=1.0)
    batch = pipe("a red circle", seed=20, n=2, **options)
    alone = pipe("a red circle", seed=21, n=1, **options)
    other = pipe("a red circle", seed=21, n=1, **dict(options, eta=0.0))
    assert np.abs(np.asarray(batch[1], dtype=int) - np.asarray(alone[0], dtype=int)).max() <= 1
    assert np.abs(np.asarray(alone[0], dtype=int) - np.asarray(other[0], dtype=int)).mean() > 1.0


def test_a_bad_value_raises_a_value_error_with_the_scripts_message(pipes, tiny_models, tmp_path, capsys):
    pipe = pipes["img2img"]
    with pytest.raises(UsageError, match=r"^--strength must be in \[0, 1\], got 1.5$") as raised:
        pipe("a cat", image=np.zeros((32, 32, 3), dtype=np.uint8), strength=1.5)
    assert isinstance(raised.value, ValueError)
    code = main_exit_code("img2img.py", [*tiny_models["txt2img"].flags(), "--init-img", "x.png", "--strength",
                                         "1.5", "--outdir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"img2img.py: error: {raised.value}"


def test_unknown_keywords_and_per_call_load_settings_are_type_errors(pipes):
    with pytest.raises(TypeError, match="unexpected keyword 'strength'"):
        pipes["txt2img"]("a cat", strength=0.5)
    with pytest.raises(TypeError, match="set it in ldm.load"):
        pipes["txt2img"]("a cat", device="cpu")


def test_per_prompt_inputs_must_match_the_prompts(pipes, inputs):
    with pytest.raises(UsageError, match="got 1 inputs for 2 prompt"):
        pipes["img2img"](["a", "b"], image=[str(inputs["image"])])


def test_an_unknown_task_is_named_in_the_error():
    with pytest.raises(UsageError, match="unknown task 'txt2vid'; choose one of txt2img, img2img"):
        ldm.load("txt2vid")


def test_a_model_of_another_task_is_refused_at_load(tiny_models):
    with pytest.raises(UsageError, match="txt2img needs a text-to-image model.*use scripts/inpaint.py"):
        tiny_models["inpaint"].load()


def test_import_ldm_does_not_import_the_api_or_torch():
    code = "import sys, ldm; print('ldm.inference.api' in sys.modules, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_save_image_writes_the_parameters_and_never_overwrites(pipes, tmp_path):
    from ldm.inference.images import read_parameters, save_image

    image = pipes["txt2img"]("a red circle", steps=1, n=1)[0]
    path = save_image(image, tmp_path / "a.png")
    assert read_parameters(str(path)) == image.info["parameters"]
    with pytest.raises(FileExistsError):
        save_image(image, path)


def test_seed_minus_one_draws_a_random_seed_and_records_it(pipes):
    images = pipes["txt2img"]("a red circle", seed=-1, n=2, steps=1)
    seeds = [int(image.info["parameters"].split("Seed: ")[1].split(",")[0]) for image in images]
    assert 0 <= seeds[0] < 2 ** 32 and seeds[1] == seeds[0] + 1
    again = pipes["txt2img"]("a red circle", seed=seeds[0], n=2, steps=1)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again))


def test_a_keyword_of_the_wrong_type_is_the_scripts_one_line_error(pipes):
    with pytest.raises(UsageError, match=r"^--steps must be a whole number, got 'abc'$"):
        pipes["txt2img"]("a cat", steps="abc")
    with pytest.raises(UsageError, match=r"^--scale must be a number, got '7'$"):
        pipes["txt2img"]("a cat", scale="7")


def test_generating_leaves_the_global_random_generators_alone(pipes):
    """Every draw comes from the images' own generators: a call neither reseeds nor advances
    torch's global generator (no process-wide side effect)."""
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    pipes["img2img"]("a red circle", image=np.zeros((32, 32, 3), dtype=np.uint8), steps=4, eta=0.5, n=2)
    assert torch.equal(torch.rand(3), expected)


def test_depth2img_without_a_depth_map_uses_the_models_midas_estimate(pipes, inputs):
    import torch

    from ldm.inference.images import load_image

    pipe = pipes["depth2img"]
    options = dict(image=str(inputs["image"]), steps=4, strength=0.8, seed=3, n=1)
    estimated = pipe("a red circle", **options)[0]
    image = load_image(str(inputs["image"]), pipe.spec.pixel_multiple)
    with torch.no_grad():
        depth = pipe.model.estimate_depth_of_images(image)[0, 0].numpy()
    given = pipe("a red circle", depth=depth, **options)[0]
    assert np.array_equal(np.asarray(estimated), np.asarray(given))
    flat = pipe("a red circle", depth=np.zeros_like(depth), **options)[0]
    assert not np.array_equal(np.asarray(estimated), np.asarray(flat))


@pytest.mark.parametrize("sampler", ["ddim", "plms", "heun", "dpmpp_2m_sde", "unipc"])
def test_cache_interval_one_makes_the_same_pixels_as_no_cache_and_two_changes_them(pipes, sampler):
    pipe = pipes["txt2img"]
    plain = pipe("a red circle", steps=4, n=2, sampler=sampler)
    every_step = pipe("a red circle", steps=4, n=2, sampler=sampler, cache_interval=1)
    cached = pipe("a red circle", steps=4, n=2, sampler=sampler, cache_interval=2)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, every_step))
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, cached))
    assert pipe.unet.feature_cache is None


def test_a_bad_cache_interval_is_the_scripts_one_line_error(pipes, tiny_models, tmp_path, capsys):
    with pytest.raises(UsageError, match=r"^--cache-interval must be at least 1 .*got 0$"):
        pipes["txt2img"]("a cat", cache_interval=0)
    with pytest.raises(UsageError, match=r"^--cache-interval must be a whole number, got 2.5$"):
        pipes["txt2img"]("a cat", cache_interval=2.5)
    with pytest.raises(UsageError, match=r"^--cache-depth must be 0 or more .*got -1$"):
        pipes["txt2img"]("a cat", cache_interval=2, cache_depth=-1)
    code = main_exit_code("txt2img.py", [*tiny_models["txt2img"].flags(), "--cache-interval", "3", "--compile",
                                         "--outdir", str(tmp_path / "out")])
    assert code == 2
    assert "--cache-interval and --compile do not go together" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def top_attention_model(tiny_models, tmp_path_factory):
    """The tiny text-to-image model with transformers at the latent's own resolution too (where token
    merging merges), saved as config + checkpoint."""
    from tests.scripts.helpers import _save_model, _text_stage
    from tests.tiny_configs import tiny_latent_diffusion_config, tiny_unet_config

    config = tiny_latent_diffusion_config(unet_config=tiny_unet_config(attention_resolutions=[1, 2]),
                                          cond_stage_config=_text_stage(tiny_models["txt2img"].config.parent / "clip"))
    return _save_model(tmp_path_factory.mktemp("top_attention"), "txt2img-top-attention", config, seed=7)


@pytest.fixture(scope="module")
def top_attention_pipe(top_attention_model):
    return top_attention_model.load()


def _pixels(images):
    return [np.asarray(image) for image in images]


@pytest.mark.parametrize("sampler", ["ddim", "heun", "dpmpp_2m_sde"])
def test_token_merging_zero_makes_the_same_pixels_and_a_half_changes_them_reproducibly(top_attention_pipe, sampler):
    pipe = top_attention_pipe
    options = dict(steps=4, n=2, seed=3, sampler=sampler)
    plain = _pixels(pipe("a red circle", **options))
    unmerged = _pixels(pipe("a red circle", token_merging=0.0, **options))
    merged = pipe("a red circle", token_merging=0.5, **options)
    again = _pixels(pipe("a red circle", token_merging=0.5, **options))
    assert all(np.array_equal(a, b) for a, b in zip(plain, unmerged))
    assert not any(np.array_equal(a, b) for a, b in zip(plain, _pixels(merged)))
    assert all(np.array_equal(a, b) for a, b in zip(_pixels(merged), again))
    assert "Token merging ratio: 0.5" in merged[0].info["parameters"]
    assert all(block.token_merging is None for block in pipe.unet.modules() if hasattr(block, "token_merging"))


def test_token_merging_works_under_the_cpu_bf16_autocast_with_bf16_weights(top_attention_model, monkeypatch):
    monkeypatch.setenv("LDM_CPU_BF16", "1")
    pipe = top_attention_model.load()
    assert pipe.dtype == pipe.weights_dtype == torch.bfloat16
    options = dict(steps=4, n=2, seed=3)
    plain = _pixels(pipe("a red circle", **options))
    merged = _pixels(pipe("a red circle", token_merging=0.5, **options))
    again = _pixels(pipe("a red circle", token_merging=0.5, **options))
    assert not any(np.array_equal(a, b) for a, b in zip(plain, merged))
    assert all(np.array_equal(a, b) for a, b in zip(merged, again))


def test_token_merging_gives_an_image_the_same_pixels_alone_as_in_a_batch(top_attention_pipe):
    together = top_attention_pipe("a red circle", steps=4, seed=5, n=2, token_merging=0.5)
    alone = top_attention_pipe("a red circle", steps=4, seed=6, n=1, token_merging=0.5)
    assert np.abs(np.asarray(together[1], dtype=int) - np.asarray(alone[0], dtype=int)).max() <= 1


def test_token_merging_leaves_the_global_random_generator_alone(top_attention_pipe):
    torch.manual_seed(0)
    top_attention_pipe("a red circle", steps=2, seed=1, token_merging=0.5)
    merged_state = torch.get_rng_state()
    torch.manual_seed(0)
    top_attention_pipe("a red circle", steps=2, seed=1)
    assert torch.equal(torch.get_rng_state(), merged_state)


def test_token_merging_and_deep_cache_go_together(top_attention_pipe):
    options = dict(steps=4, n=2, seed=3, cache_interval=2)
    cached = _pixels(top_attention_pipe("a red circle", **options))
    both = top_attention_pipe("a red circle", token_merging=0.5, **options)
    assert not any(np.array_equal(a, b) for a, b in zip(cached, _pixels(both)))
    assert "Cache interval: 2, Cache depth: 1, Token merging ratio: 0.5" in both[0].info["parameters"]
    assert top_attention_pipe.unet.feature_cache is None


def test_a_bad_token_merging_ratio_is_the_scripts_one_line_error(pipes, tiny_models, tmp_path, capsys):
    for bad in (1.0, -0.25):
        with pytest.raises(UsageError, match=rf"^--token-merging must be in \[0, 1\) .*got {bad}$"):
            pipes["txt2img"]("a cat", token_merging=bad)
    with pytest.raises(UsageError, match=r"^--token-merging must be a number, got '0.5'$"):
        pipes["txt2img"]("a cat", token_merging="0.5")
    outdir = tmp_path / "out"
    for flags, message in ((["--token-merging", "1.5"], "--token-merging must be in [0, 1)"),
                           (["--token-merging", "0.5", "--compile"], "--token-merging and --compile do not go")):
        assert main_exit_code("txt2img.py", [*tiny_models["txt2img"].flags(), *flags, "--outdir", str(outdir)]) == 2
        assert message in capsys.readouterr().err
    assert not outdir.exists()


def test_the_script_records_token_merging_in_the_png_parameters(top_attention_model, tmp_path, capsys):
    outdir = tmp_path / "out"
    code = main_exit_code("txt2img.py", [*top_attention_model.flags(), "--prompt", "a red circle", "--steps", "2",
                                         "--n_samples", "1", "--n_iter", "1", "--token-merging", "0.3",
                                         "--outdir", str(outdir), "--skip_grid"])
    assert code == 0, capsys.readouterr().err
    assert png_parameters(files_under(outdir)[0])["Token merging ratio"] == "0.3"
