"""The command lines of the scripts that sample models without a text prompt:
``scripts/sample_diffusion.py`` (unconditional models, the CompVis script's flags) and
``scripts/sample_class.py`` (class-conditional models). Like the prompt scripts' parsers
(:mod:`ldm.inference.parsers`) they give the Python API its defaults; the options of the shared
generation path they do not offer are set to their neutral values."""
from __future__ import annotations

import argparse

from ldm.inference import cli
from ldm.inference.loading import default_model_paths

# Options of the shared generation path that these scripts do not offer.
_NO_PROMPT = dict(prompt=None, negative_prompt="", from_file=None, repeat=1, n_iter=1, fixed_code=False)
SEED_HELP = ("seed of the first image; image i uses seed + i, whatever the batch size, so each image can be "
             "regenerated alone (default: %(default)s)")


def unconditional_parser() -> argparse.ArgumentParser:
    """``sample_diffusion.py``: the CompVis flags (-r -n -e -c --batch_size -l -v, with their
    defaults) and ours (--sampler, --seed, --config, --device, precision)."""
    config, ckpt = default_model_paths("unconditional")
    parser = argparse.ArgumentParser(
        prog="sample_diffusion.py",
        description="Sample an unconditional model (a pixel-space DDPM or an unconditional latent diffusion "
                    "model) into <logdir>/samples/<global step>/<time>/: img/sample_NNNNNN.png and "
                    "numpy/<N>x<H>x<W>x<C>-samples.npz (uint8 NHWC under arr_0, the input of FID tools).")
    model = parser.add_argument_group("model")
    model.add_argument("-r", "--resume", type=str, nargs="?", default=None,
                       help="a training logdir (its checkpoints/last.ckpt and configs/*-project.yaml, or "
                            "model.ckpt and config.yaml as the original's model downloads) or a checkpoint "
                            "(with --config, the <name>.yaml beside it or the configs of its logdir) "
                            f"(default: {ckpt})")
    model.add_argument("--config", type=str, default=None,
                       help=f"model config YAML, for a checkpoint without one beside it (default: {config}, "
                            "or the one -r finds)")
    cli.add_device_arg(model)
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("-n", "--n_samples", type=int, default=50000,
                          help="number of samples to draw (default: %(default)s, the original's, as FID takes)")
    sampling.add_argument("-e", "--eta", "--ddim_eta", dest="ddim_eta", type=float, default=None,
                          help="DDIM eta: 0 is deterministic, 1 as stochastic as DDPM (default: 1.0 with the "
                               "DDIM sampler, as the original; other samplers take none)")
    sampling.add_argument("--custom_steps", "-c", "--steps", dest="steps", type=int, default=50,
                          help="number of sampling steps (default: %(default)s)")
    sampling.add_argument("--batch_size", type=int, default=10, help="images per batch (default: %(default)s)")
    sampling.add_argument("-v", "--vanilla_sample", action="store_true",
                          help="ancestral (DDPM) sampling on every timestep of the model, as the original's "
                               "-v (= --sampler ddpm --steps <the model's timesteps>); -c is not used")
    cli.add_sampler_choice(parser, sampling)
    sampling.add_argument("--seed", type=int, default=42, help=SEED_HELP)
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("-l", "--logdir", type=str, nargs="?", default="none",
                         help="write under LOGDIR/<name of the run's folder>/ instead of the run's folder "
                              "(the checkpoint's folder, or the logdir holding its checkpoints/) (default: none)")
    cli.add_performance_args(parser)
    parser.set_defaults(**_NO_PROMPT, scale=1.0, n_rows=0, outdir=None, skip_save=False, skip_grid=True,
                        ckpt=None, ema=None)
    return parser


def class_parser() -> argparse.ArgumentParser:
    """``sample_class.py``: classes by number or name, the txt2img conventions for the rest
    (outputs, sampler, guidance, seeds, model and precision flags)."""
    parser = argparse.ArgumentParser(
        prog="sample_class.py",
        description="Sample a class-conditional model (a ClassEmbedder cond stage, as the LDM paper's "
                    "ImageNet model), --n_samples images of each class.")
    classes = parser.add_argument_group("classes")
    classes.add_argument("--classes", type=str, nargs="+", default=None, metavar="CLASS",
                         help="class numbers, or names where the checkpoint has them (<checkpoint>.classes.txt "
                              "beside it; quote names with spaces) (default: four classes spread over the "
                              "model's)")
    classes.add_argument("--class_names", "--class-names", type=str, default=None, metavar="FILE",
                         help="the class names, one per line (line i: class i) (default: <checkpoint>.classes.txt "
                              "beside the checkpoint, when there is one)")
    cli.add_output_args(parser, outdir="outputs/class-samples")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", "--ddim_steps", dest="steps", type=int, default=50,
                          help="number of sampling steps (default: %(default)s)")
    cli.add_sampler_choice(parser, sampling)
    sampling.add_argument("--eta", "--ddim_eta", dest="ddim_eta", type=float, default=0.0,
                          help="DDIM eta: 0 is deterministic DDIM, 1 is as stochastic as DDPM (default: %(default)s)")
    sampling.add_argument("--scale", type=float, default=3.0,
                          help="classifier-free guidance scale against the model's 'no class' label (the last "
                               "class, n_classes - 1); 1 turns guidance off (default: %(default)s, as the "
                               "original's class-conditional demo)")
    sampling.add_argument("--seed", type=int, default=42, help=SEED_HELP)
    sampling.add_argument("--n_samples", type=int, default=6,
                          help="images of each class (default: %(default)s)")
    sampling.add_argument("--batch_size", type=int, default=None,
                          help="images per sampler call (default: --n_samples, one batch per class)")
    cli.add_model_args(parser, *default_model_paths("class"))
    cli.add_performance_args(parser)
    parser.set_defaults(**_NO_PROMPT)
    return parser


PARSERS = {"unconditional": unconditional_parser, "class": class_parser}
