"""Text to image: ``python scripts/txt2img.py --prompt "..." --config <yaml> --ckpt <file>``.

Flags and defaults are those of the Stability-AI script (SD 2.x), with the CompVis spellings
``--ddim_steps`` and ``--dpm_solver`` accepted; see docs/SCRIPTS.md.
"""
import argparse

from ldm.inference import cli
from ldm.inference.loading import default_model_paths
from ldm.inference.runner import run_task
from ldm.inference.tasks import TextToImage


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="txt2img.py", description="Make images from a text prompt.")
    cli.add_prompt_args(parser, prompt="a professional photograph of an astronaut riding a triceratops")
    cli.add_output_args(parser, outdir="outputs/txt2img-samples")
    cli.add_sampling_args(parser, steps=50, scale=9.0, n_iter=3, n_samples=3)
    cli.add_size_args(parser)
    cli.add_model_args(parser, *default_model_paths("txt2img"))
    cli.add_performance_args(parser)
    return parser


def main(argv=None) -> None:
    cli.run_script(build_parser(), lambda opt: run_task(opt, TextToImage), argv)


if __name__ == "__main__":
    main()
