"""``--help`` of every script documents every flag it accepts."""
import argparse

import pytest

from tests.scripts.helpers import load_script

SCRIPTS = ["txt2img.py", "img2img.py", "inpaint.py", "depth2img.py", "upscale.py", "unclip.py"]
SHARED = ["--prompt", "--negative_prompt", "--from-file", "--repeat", "--outdir", "--skip_grid", "--skip_save",
          "--n_rows", "--steps", "--ddim_steps", "--ddim_eta", "--scale", "--seed", "--fixed_code", "--n_iter",
          "--n_samples", "--config", "--ckpt", "--ema", "--no-ema", "--device", "--precision", "--bf16",
          "--compile", "--attention-slicing", "--vae-tiling", "--cache-interval", "--cache-depth", "--token-merging"]
SAMPLER_FLAGS = ["--sampler", "--plms", "--dpm", "--dpm_solver"]
OWN_FLAGS = {
    "txt2img.py": SAMPLER_FLAGS + ["--H", "--W", "--C", "--f"],
    "img2img.py": ["--init-img", "--strength"],
    "inpaint.py": SAMPLER_FLAGS + ["--init-img", "--mask"],
    "depth2img.py": ["--init-img", "--depth", "--strength", "--save-depth"],
    "upscale.py": SAMPLER_FLAGS + ["--init-img", "--noise_level"],
    "unclip.py": SAMPLER_FLAGS + ["--H", "--W", "--init-img", "--noise_level", "--prior-config", "--prior-ckpt",
                                  "--prior-clip", "--prior-clip-stats", "--prior-steps", "--prior-scale"],
}


def _help_text(script, capsys):
    with pytest.raises(SystemExit) as stop:
        load_script(script).main(["--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_names_and_explains_every_flag(script, capsys):
    text = _help_text(script, capsys)
    parser = load_script(script).build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 10, f"{action.option_strings} has no help text"
        for flag in action.option_strings:
            assert flag in text, f"{flag} missing from {script} --help"
    for flag in SHARED + OWN_FLAGS[script]:
        assert flag in parser._option_string_actions, f"{script} lacks {flag}"


def test_txt2img_help_lists_the_samplers(capsys):
    text = _help_text("txt2img.py", capsys)
    for name in ("ddim", "plms", "dpm", "euler_a", "dpmpp_2m_karras", "unipc"):
        assert f"\n  {name}: " in text


SAMPLING_SCRIPT_FLAGS = {
    "sample_diffusion.py": ["-r", "--resume", "-n", "--n_samples", "-e", "--eta", "-c", "--custom_steps",
                            "--batch_size", "-l", "--logdir", "-v", "--vanilla_sample", "--sampler", "--seed",
                            "--config", "--device", "--precision"],
    "sample_class.py": ["--classes", "--class_names", "--scale", "--n_samples", "--batch_size", "--steps",
                        "--sampler", "--eta", "--seed", "--outdir", "--skip_grid", "--ckpt", "--config", "--device"],
}


@pytest.mark.parametrize("script", list(SAMPLING_SCRIPT_FLAGS))
def test_sampling_scripts_document_their_flags_and_keep_the_originals_defaults(script, capsys):
    text = _help_text(script, capsys)
    parser = load_script(script).build_parser()
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help and len(action.help) > 10, f"{action.option_strings} has no help text"
    for flag in SAMPLING_SCRIPT_FLAGS[script]:
        assert flag in parser._option_string_actions and flag in text, f"{script} lacks {flag}"
    assert "\n  ddpm: " in text
    if script == "sample_diffusion.py":  # the CompVis script's defaults
        defaults = parser.parse_args([])
        assert (defaults.n_samples, defaults.steps, defaults.batch_size, defaults.logdir) == (50000, 50, 10, "none")
        assert defaults.resume is None and defaults.vanilla_sample is False
