"""scripts/edit.py (editing by DDIM inversion) end to end on a tiny random-weight model, the same
request through ``ldm.load("edit")``, and bad inputs."""
import numpy as np
from PIL import Image

import ldm
from tests.scripts.helpers import bad_input_failures, files_under, main_exit_code, png_parameters, write_test_image


def edit_flags(tmp_path, tiny_models):
    init = write_test_image(tmp_path / "in.png", size=(34, 27))  # rounded down to 32x24
    return ["--init-img", str(init), "--source-prompt", "a red circle", "--prompt", "a blue circle",
            "--steps", "4", "--inversion-steps", "8", "--keep", "0.5", "--scale", "3", "--seed", "7",
            *tiny_models["txt2img"].flags()]


def test_edit_writes_the_edited_image_with_its_parameters_and_equals_the_api(tiny_models, tmp_path, capsys):
    flags = edit_flags(tmp_path, tiny_models)
    assert main_exit_code("edit.py", [*flags, "--outdir", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    written = [p.relative_to(tmp_path / "out").as_posix() for p in files_under(tmp_path / "out")]
    assert written == ["grid-0000.png", "samples/00000.png"]
    sample = tmp_path / "out" / "samples" / "00000.png"
    assert Image.open(sample).size == (32, 24)
    parsed = png_parameters(sample)
    assert (parsed["Prompt"], parsed["Source prompt"], parsed["Seed"], parsed["Sampler"]) == (
        "a blue circle", "a red circle", "7", "DDIM")
    assert (parsed["Steps"], parsed["Inversion steps"], float(parsed["Keep"]), float(parsed["CFG scale"])) == (
        "4", "8", 0.5, 3.0)

    model = tiny_models["txt2img"]
    pipe = ldm.load("edit", ckpt=str(model.ckpt), config=str(model.config), device="cpu")
    image, = pipe("a blue circle", source_prompt="a red circle", image=str(tmp_path / "in.png"), steps=4,
                  inversion_steps=8, keep=0.5, scale=3.0, seed=7)
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(sample)))
    assert image.info["parameters"] == Image.open(sample).info["parameters"]
    # the target prompt matters, and keep 1 gives back the (VAE round trip of the) image unchanged by the prompt
    other, = pipe("a green star", source_prompt="a red circle", image=str(tmp_path / "in.png"), steps=4,
                  inversion_steps=8, keep=0.5, scale=3.0, seed=7)
    assert not np.array_equal(np.asarray(other), np.asarray(image))
    kept = [pipe(prompt, source_prompt="a red circle", image=str(tmp_path / "in.png"), steps=4, inversion_steps=8,
                 keep=1.0, seed=7)[0] for prompt in ("a blue circle", "a green star")]
    assert np.array_equal(np.asarray(kept[0]), np.asarray(kept[1]))


def test_edit_bad_inputs_exit_2_with_one_line_and_write_nothing(tiny_models, tmp_path, capsys):
    flags = edit_flags(tmp_path, tiny_models)
    without_source = [flag for flag in flags if flag not in ("--source-prompt", "a red circle")]
    without_image = flags[2:]
    diffedit = [*flags, "--mask-mode", "diffedit"]
    cases = [
        (without_source, r"--source-prompt is required"),
        (without_image, r"--init-img is required"),
        ([*flags, "--keep", "1.5"], r"--keep must be in \[0, 1\], got 1.5"),
        ([*flags, "--inversion-steps", "0"], r"--inversion-steps must be at least 1, got 0"),
        ([*flags, "--steps", "50", "--keep", "0"], r"starts at timestep 981 .* 8-step inversion does not reach"),
        ([*flags, "--init-img", str(tmp_path / "missing.png")], r"missing\.png"),
        ([*flags, "--mask-mode", "attention"], r"--mask-mode.* invalid choice: 'attention'"),
        ([*diffedit, "--mask-threshold", "1"], r"--mask-threshold must be in \(0, 1\), got 1.0"),
        ([*diffedit, "--mask-strength", "0"], r"--mask-strength must be in \(0, 1\], got 0.0"),
        ([*diffedit, "--mask-noises", "0"], r"--mask-noises must be at least 1, got 0"),
        ([*diffedit, "--mask-dilate", "-1"], r"--mask-dilate must be 0 or more, got -1"),
        ([*diffedit, "--mask-fill", "zeros"], r"--mask-fill.* invalid choice: 'zeros'"),
        ([*flags, "--inversion-prompt", "target"], r"--inversion-prompt.* invalid choice: 'target'"),
        ([*diffedit, "--steps", "8", "--inversion-steps", "4", "--keep", "0.625"],
         r"masked regeneration passes timestep 126 .* 4-step inversion does not reach"),
        ([*flags, "--structure-scale", "-1"], r"--structure-scale must be a finite number >= 0, got -1.0"),
        ([*flags, "--structure-scale", "nan"], r"--structure-scale must be a finite number >= 0, got nan"),
        ([*diffedit, "--color-transfer"], r"--color-transfer and --mask-mode diffedit cannot be combined"),
        ([*flags, "--color-transfer", "--steps", "5", "--keep", "1"],
         r"starts at timestep 801 .* 8-step inversion does not reach"),
    ]
    assert bad_input_failures("edit.py", cases, "--outdir", tmp_path, capsys) == []


def test_diffedit_mode_writes_its_parameters_equals_the_api_and_differs_from_the_plain_edit(
        tiny_models, tmp_path, capsys):
    flags = [*edit_flags(tmp_path, tiny_models), "--mask-mode", "diffedit", "--mask-threshold", "0.6",
             "--mask-noises", "2"]
    assert main_exit_code("edit.py", [*flags, "--outdir", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    sample = tmp_path / "out" / "samples" / "00000.png"
    parsed = png_parameters(sample)
    assert (parsed["Mask mode"], float(parsed["Mask threshold"]), float(parsed["Mask strength"]),
            parsed["Mask noises"]) == ("diffedit", 0.6, 0.5, "2")
    model = tiny_models["txt2img"]
    pipe = ldm.load("edit", ckpt=str(model.ckpt), config=str(model.config), device="cpu")
    request = dict(source_prompt="a red circle", image=str(tmp_path / "in.png"), steps=4, inversion_steps=8,
                   keep=0.5, scale=3.0, seed=7)
    masked, = pipe("a blue circle", mask_mode="diffedit", mask_threshold=0.6, mask_noises=2, **request)
    assert np.array_equal(np.asarray(masked), np.asarray(Image.open(sample)))
    plain, = pipe("a blue circle", **request)
    assert "Mask mode" not in plain.info["parameters"] and "Mask mode: diffedit" in masked.info["parameters"]
    assert not np.array_equal(np.asarray(masked), np.asarray(plain))


def test_diffedit_options_are_recorded_and_change_the_edit(tiny_models, tmp_path, capsys):
    model = tiny_models["txt2img"]
    pipe = ldm.load("edit", ckpt=str(model.ckpt), config=str(model.config), device="cpu")
    write_test_image(tmp_path / "in.png", size=(34, 27))
    request = dict(source_prompt="a red circle", image=str(tmp_path / "in.png"), steps=4, inversion_steps=8,
                   keep=0.5, scale=3.0, seed=7, mask_mode="diffedit", mask_threshold=0.6, mask_noises=2)
    base, = pipe("a blue circle", **request)
    variants = {name: pipe("a blue circle", **request, **option)[0] for name, option in [
        ("dilate", dict(mask_dilate=1)), ("fill", dict(mask_fill="noise")),
        ("empty", dict(inversion_prompt="empty")), ("structure", dict(structure_scale=1000.0))]}
    parsed = png_parameters_of(variants["fill"])
    assert (parsed["Mask dilate"], parsed["Mask fill"]) == ("0", "noise") and "Inversion prompt" not in parsed
    assert png_parameters_of(variants["empty"])["Inversion prompt"] == "empty"
    for name, image in variants.items():
        assert not np.array_equal(np.asarray(image), np.asarray(base)), name
    # the fresh noise inside the mask comes from the seed: the same seed repeats, another differs
    again, = pipe("a blue circle", **request, mask_fill="noise")
    assert np.array_equal(np.asarray(again), np.asarray(variants["fill"]))
    other, = pipe("a blue circle", **{**request, "seed": 8}, mask_fill="noise")
    assert not np.array_equal(np.asarray(other), np.asarray(variants["fill"]))


def test_color_transfer_records_its_options_equals_the_api_and_changes_the_edit(tiny_models, tmp_path, capsys):
    flags = [*edit_flags(tmp_path, tiny_models), "--color-transfer"]
    assert main_exit_code("edit.py", [*flags, "--outdir", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    sample = tmp_path / "out" / "samples" / "00000.png"
    parsed = png_parameters(sample)
    assert (parsed["Color transfer"], float(parsed["Structure scale"])) == ("True", 10000.0)
    model = tiny_models["txt2img"]
    pipe = ldm.load("edit", ckpt=str(model.ckpt), config=str(model.config), device="cpu")
    request = dict(source_prompt="a red circle", image=str(tmp_path / "in.png"), steps=4, inversion_steps=8,
                   keep=0.5, scale=3.0, seed=7)
    transferred, = pipe("a blue circle", color_transfer=True, **request)
    assert np.array_equal(np.asarray(transferred), np.asarray(Image.open(sample)))
    plain, = pipe("a blue circle", **request)
    unguided, = pipe("a blue circle", color_transfer=True, structure_scale=0, **request)
    guided_plain, = pipe("a blue circle", structure_scale=10000, **request)
    assert "Color transfer" not in plain.info["parameters"] and "Structure scale" not in plain.info["parameters"]
    assert "Structure scale" not in unguided.info["parameters"]
    assert float(png_parameters_of(guided_plain)["Structure scale"]) == 10000.0
    images = [np.asarray(image) for image in (transferred, plain, unguided, guided_plain)]
    assert all(not np.array_equal(a, b) for i, a in enumerate(images) for b in images[i + 1:])


def png_parameters_of(image):
    from ldm.inference.parameters import parse_parameters

    return parse_parameters(image.info["parameters"])
