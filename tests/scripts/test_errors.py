"""Every bad input a user can give ends with one line on stderr, exit code 2 and nothing written.

Two cases run in a subprocess (as users see them); the rest call each script's ``main`` in this
process, which runs the same code without paying for another interpreter start-up."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.inference import runner
from tests.scripts.helpers import error_line, files_under, load_script, main_exit_code, run_script, write_test_image


def _last_error(text: str) -> str:
    """The last non-empty line of stderr (progress bars end their lines with carriage returns)."""
    lines = [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture()
def inputs(tmp_path):
    """Good and bad input files: a 32x32 image, a mask of another size, a non-image, empty files."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 32), dtype=np.uint8)).save(folder / "mask_16x32.png")
    (folder / "not_an_image.png").write_bytes(b"these are not pixels")
    (folder / "empty.txt").write_text("\n\n")
    (folder / "corrupt.ckpt").write_bytes(b"PK\x03\x04 truncated zip")
    write_test_image(folder / "image.png")
    write_test_image(folder / "small.png", size=(16, 16))
    (folder / "no_unet.yaml").write_text("model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
                                         "  params:\n    image_size: 8\n")
    (folder / "wrong_type.yaml").write_text("model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
                                            "  params:\n    image_size: abc\n    unet_config: {}\n")
    Image.new("L", (200, 200)).save(folder / "bomb.png")  # over twice BOMB_LIMIT pixels: PIL refuses it
    return folder


def _unbuildable_config(models, inputs) -> str:
    """The tiny txt2img config with a UNet width of the wrong type (a string)."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(models["txt2img"].config)
    config.model.params.unet_config.params.model_channels = "wide"
    path = inputs / "unbuildable.yaml"
    OmegaConf.save(config, path)
    return str(path)


def _cases(models, inputs):
    """(script, argv, expected message pattern) for every bad input."""
    txt, inpaint, depth, upscale = (models[name].flags() for name in ("txt2img", "inpaint", "depth", "upscale"))
    image, mask = str(inputs / "image.png"), str(inputs / "mask_16x32.png")
    return [
        ("txt2img.py", ["--config", str(inputs / "missing.yaml"), "--ckpt", str(models["txt2img"].ckpt)],
         r"--config: file not found: .*missing\.yaml"),
        ("txt2img.py", ["--config", str(inputs / "empty.txt"), "--ckpt", str(models["txt2img"].ckpt)],
         r"--config: .*has no model section"),
        ("txt2img.py", ["--config", str(models["txt2img"].config), "--ckpt", str(inputs / "missing.ckpt")],
         r"--ckpt: file not found: .*missing\.ckpt"),
        ("txt2img.py", ["--config", str(models["txt2img"].config)], r"no checkpoint given: pass --ckpt"),
        ("txt2img.py", ["--config", str(models["txt2img"].config), "--ckpt", str(inputs / "corrupt.ckpt")],
         r"cannot read checkpoint .*corrupt\.ckpt: the file is corrupted, truncated"),
        ("txt2img.py", ["--config", str(models["txt2img"].config), "--ckpt", str(models["inpaint"].ckpt)],
         r"inpaint\.ckpt does not fit .*txt2img\.yaml: .*UNet \(model\.diffusion_model\).*wrong shape.*"
         r"Its UNet takes 9 input channels: try --config configs/stable-diffusion/v2-inpainting-inference\.yaml"),
        ("txt2img.py", [*txt, "--H", "36"], r"--H must be a positive multiple of 8, got 36"),
        ("txt2img.py", [*txt, "--W", "0"], r"--W must be a positive multiple of 8, got 0"),
        ("txt2img.py", [*txt, "--from-file", str(inputs / "empty.txt")], r"--from-file: .*empty\.txt holds no prompts"),
        ("txt2img.py", [*txt, "--device", "gpu"], r"--device: unknown device 'gpu'"),
        ("txt2img.py", [*txt, "--C", "3"], r"--C 3 does not match the config's latent channels \(4\)"),
        ("txt2img.py", [*txt, "--plms", "--dpm"], r"--plms and --dpm both given"),
        ("txt2img.py", [*txt, "--sampler", "nope"], r"unknown sampler 'nope'"),
        ("txt2img.py", [*txt, "--steps", "3", "--H", "16", "--W", "16"],
         r"--steps 3 does not fit the original 'uniform' DDIM grid"),
        ("txt2img.py", [*txt, "--plms", "--ddim_eta", "0.5", "--steps", "2", "--H", "16", "--W", "16"],
         r"the plms sampler does not support eta \(--ddim_eta 0\.5\): .*samplers that take eta: ddim"),
        ("txt2img.py", [*txt, "--sampler", "euler", "--ddim_eta", "0.7", "--steps", "2", "--H", "16", "--W", "16"],
         r"the euler sampler does not support eta \(--ddim_eta 0\.7\): it is deterministic; samplers that take "
         r"eta: ddim"),
        ("txt2img.py", [*txt, "--n_samples", "0"], r"--n_samples must be at least 1, got 0"),
        ("txt2img.py", [*txt, "--precision", "full", "--bf16"], r"--bf16 needs --precision autocast"),
        ("txt2img.py", inpaint, r"txt2img needs a text-to-image model, but --config .* is an inpainting model; "
                                r"use scripts/inpaint\.py"),
        ("img2img.py", [*txt, "--init-img", image, "--strength", "1.5"], r"--strength must be in \[0, 1\], got 1\.5"),
        ("img2img.py", [*txt, "--init-img", image, "--strength", "-0.1"], r"--strength must be in \[0, 1\], got -0\.1"),
        ("img2img.py", [*txt], r"--init-img is required"),
        ("img2img.py", [*txt, "--init-img", str(inputs / "missing.png")], r"--init-img: file not found"),
        ("img2img.py", [*txt, "--init-img", str(inputs / "not_an_image.png")], r"--init-img: cannot read .* as an image"),
        ("inpaint.py", [*inpaint, "--init-img", image, "--mask", mask],
         r"--mask: the mask is 32x16 but the image is 32x32; they must be the same size"),
        ("inpaint.py", [*inpaint, "--init-img", image, "--mask", str(inputs / "not_an_image.png")],
         r"--mask: cannot read"),
        ("inpaint.py", [*inpaint, "--init-img", image], r"--mask is required"),
        ("inpaint.py", [*txt, "--init-img", image, "--mask", str(inputs / "image.png"), "--dpm", "--steps", "2"],
         r"the dpm sampler does not support mask .*samplers that take mask: ddim, plms"),
        ("depth2img.py", [*depth, "--init-img", image, "--depth", str(inputs / "not_an_image.png")],
         r"--depth: cannot read"),
        ("depth2img.py", [*txt, "--init-img", image, "--depth", image],
         r"depth2img needs a depth-to-image model"),
        ("upscale.py", [*upscale, "--init-img", str(inputs / "small.png"), "--noise_level", "350"],
         r"--noise_level must be in \[0, 349\] for this model, got 350"),
        ("upscale.py", [*upscale], r"--init-img is required"),
        ("txt2img.py", ["--config", str(inputs / "no_unet.yaml"), "--ckpt", str(models["txt2img"].ckpt)],
         r"--config: .*no_unet\.yaml has no model\.params\.unet_config"),
        ("txt2img.py", ["--config", str(inputs / "wrong_type.yaml"), "--ckpt", str(models["txt2img"].ckpt)],
         r"--config: .*wrong_type\.yaml: model\.params\.image_size must be a whole number, got 'abc'"),
        ("txt2img.py", ["--config", _unbuildable_config(models, inputs), "--ckpt", str(models["txt2img"].ckpt)],
         r"--config: .*unbuildable\.yaml does not build a model \(TypeError: "),
        ("txt2img.py", ["--config", str(inputs), "--ckpt", str(models["txt2img"].ckpt)],
         r"--config: .*inputs is a folder; pass the YAML file"),
        ("txt2img.py", [*txt, "--attention-slicing", "0"], r"--attention-slicing must be a positive number of "
                                                           r"query rows, got 0"),
        ("txt2img.py", [*txt, "--n_rows", "-1"], r"--n_rows must be 0 \(one row per batch\) or more, got -1"),
        ("txt2img.py", ["--ckpt", str(models["txt2img"].config)], r"--ckpt: .*txt2img\.yaml is a YAML config, not a "
                                                                  r"checkpoint; pass it as --config"),
        ("txt2img.py", ["--config", str(models["txt2img"].ckpt), "--ckpt", str(models["txt2img"].ckpt)],
         r"--config: .*txt2img\.ckpt is a checkpoint, not a YAML config; pass it as --ckpt"),
        ("txt2img.py", [*txt, "--scale", "nan"], r"--scale must be a finite number, got nan"),
        ("txt2img.py", [*txt, "--scale", "inf"], r"--scale must be a finite number, got inf"),
        ("txt2img.py", [*txt, "--ddim_eta", "nan"], r"--ddim_eta must be a finite number >= 0, got nan"),
        ("txt2img.py", [*txt, "--ddim_eta", "-0.5"], r"--ddim_eta must be a finite number >= 0, got -0\.5"),
        ("txt2img.py", [*txt, "--seed", str(2 ** 64)], r"--seed must be -1 \(random\) or in \[0, 2\*\*64 - 9\]"),
        ("txt2img.py", [*txt, "--seed", "-2"], r"--seed must be -1 \(random\) or at least 0, got -2"),
        ("img2img.py", [*txt, "--init-img", str(inputs / "bomb.png")], r"--init-img: .*bomb\.png is too large"),
    ] + ([] if torch.cuda.is_available() else [
        ("txt2img.py", [*txt, "--device", "cuda"], r"--device cuda was asked for, but CUDA is not available")])


BOMB_LIMIT = 5000  # PIL.Image.MAX_IMAGE_PIXELS during the test (the inputs have at most 1024 pixels)


def test_every_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_models, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    failures = []
    for index, (script, argv, pattern) in enumerate(_cases(tiny_models, inputs)):
        outdir = tmp_path / f"out{index}"
        code = main_exit_code(script, [*argv, "--outdir", str(outdir)])
        message = _last_error(capsys.readouterr().err)
        expected_start = f"{script}: error: "
        if code != 2 or not message.startswith(expected_start) or not re.search(pattern, message):
            failures.append(f"{script} {argv[-2:]}: exit {code}, {message!r} (wanted {pattern!r})")
        if outdir.exists():
            failures.append(f"{script} {argv[-2:]}: wrote {files_under(outdir)}")
    assert not failures, "\n".join(failures)


def test_a_bare_outdir_is_one_line_before_any_work(tiny_models, capsys):
    code = main_exit_code("txt2img.py", [*tiny_models["txt2img"].flags(), "--outdir"])
    assert code == 2
    assert _last_error(capsys.readouterr().err) == "txt2img.py: error: --outdir needs a folder name"


def test_ctrl_c_reports_the_images_saved_exits_130_and_leaves_no_partial_file(tiny_models, tmp_path, capsys,
                                                                              monkeypatch):
    from ldm.inference import tasks

    generate = tasks.TextToImage.generate
    calls = []

    def interrupted_on_the_second_batch(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return generate(self, *args)

    monkeypatch.setattr(tasks.TextToImage, "generate", interrupted_on_the_second_batch)
    outdir = tmp_path / "out"
    code = main_exit_code("txt2img.py", [*tiny_models["txt2img"].flags(), "--n_samples", "2", "--n_iter", "3",
                                         "--steps", "2", "--H", "16", "--W", "16", "--outdir", str(outdir)])
    assert code == 130
    assert _last_error(capsys.readouterr().err) == f"interrupted: 2 image(s) saved in {outdir}"
    assert [p.name for p in files_under(outdir)] == ["00000.png", "00001.png"]


def test_a_full_disk_is_one_line_saying_what_was_saved_and_leaves_no_partial_file(tiny_models, tmp_path, capsys,
                                                                                   monkeypatch):
    import errno

    save = Image.Image.save
    saved = []

    def disk_full_on_the_third_image(self, fp, *args, **kwargs):
        if len(saved) == 2:
            fp.write(b"\x89PNG half an image")
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(1)
        return save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", disk_full_on_the_third_image)
    outdir = tmp_path / "out"
    code = main_exit_code("txt2img.py", [*tiny_models["txt2img"].flags(), "--n_samples", "2", "--n_iter", "2",
                                         "--steps", "2", "--H", "16", "--W", "16", "--outdir", str(outdir)])
    assert code == 2
    assert _last_error(capsys.readouterr().err) == (
        f"txt2img.py: error: cannot write in {outdir / 'samples'} (No space left on device); 2 image(s) saved "
        f"in {outdir}")
    assert [p.name for p in files_under(outdir)] == ["00000.png", "00001.png"]


def test_errors_in_a_subprocess_are_one_line_with_exit_code_2(tiny_models, tmp_path):
    outdir = tmp_path / "out"
    run = run_script("txt2img.py", "--config", str(tiny_models["txt2img"].config), "--ckpt",
                     str(tiny_models["upscale"].ckpt), "--outdir", str(outdir))
    assert run.returncode == 2
    assert re.fullmatch(r"txt2img\.py: error: .*upscale\.ckpt does not fit .*txt2img\.yaml: .*", error_line(run))
    assert "Traceback" not in run.stderr
    assert not outdir.exists()


def test_out_of_memory_suggests_smaller_batches_slicing_and_tiling(tiny_models, tmp_path, capsys, monkeypatch):
    script = load_script("txt2img.py")

    def run_out_of_memory(opt, task):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runner, "run_task", run_out_of_memory)
    with pytest.raises(SystemExit) as stop:
        script.main([*tiny_models["txt2img"].flags(), "--outdir", str(tmp_path / "out")])
    assert stop.value.code == 2
    message = _last_error(capsys.readouterr().err)
    assert message.startswith("txt2img.py: error: out of memory")
    for advice in ("--n_samples 1", "--attention-slicing", "--vae-tiling"):
        assert advice in message
