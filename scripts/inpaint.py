"""Inpainting: ``python scripts/inpaint.py --init-img in.png --mask mask.png --prompt "..."
--config <yaml> --ckpt <file>``. Works with an inpainting model (v2-inpainting-inference.yaml) or,
by blending the known region while sampling, with any text-to-image model. See docs/SCRIPTS.md."""
import argparse

from ldm.inference import cli
from ldm.inference.loading import default_model_paths
from ldm.inference.runner import run_task
from ldm.inference.tasks import Inpainting


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inpaint.py", description="Repaint the masked part of an image.")
    cli.add_prompt_args(parser, prompt="")
    parser.add_argument("--init-img", type=str, default=None,
                        help="the image to inpaint; resized down to multiples of 64 (required)")
    parser.add_argument("--mask", type=str, default=None,
                        help="mask image of the same size, white where to repaint (binarised at "
                             "50%% grey) (required)")
    cli.add_output_args(parser, outdir="outputs/inpaint-samples")
    cli.add_sampling_args(parser, steps=50, scale=10.0, n_iter=1, n_samples=1)
    cli.add_model_args(parser, *default_model_paths("inpaint"))
    cli.add_performance_args(parser)
    return parser


def main(argv=None) -> None:
    cli.run_script(build_parser(), lambda opt: run_task(opt, Inpainting), argv)


if __name__ == "__main__":
    main()
