"""Depth-conditioned image to image: ``python scripts/depth2img.py --init-img in.png --depth
depth.png --prompt "..." --config configs/stable-diffusion/v2-midas-inference.yaml --ckpt <file>``.
Without --depth the model estimates the depth itself where it can. See README.md."""
import argparse

from ldm.inference import cli
from ldm.inference.loading import default_model_paths
from ldm.inference.runner import run_task
from ldm.inference.tasks import DepthToImage


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="depth2img.py", description="Redraw an image following a prompt, keeping its depth layout.")
    cli.add_prompt_args(parser, prompt="a professional photograph")
    parser.add_argument("--init-img", type=str, default=None,
                        help="the image to start from; resized down to multiples of 64 (required)")
    parser.add_argument("--depth", type=str, default=None,
                        help="depth map of --init-img as an image (grey, RGB or 16-bit; brighter = "
                             "nearer, as MiDaS outputs; any size); without it the model's own depth "
                             "estimator is used (the shapes model has one; MiDaS is not built in, so "
                             "SD 2 depth needs --depth)")
    parser.add_argument("--strength", type=float, default=0.9,
                        help="how much to change the image, in [0, 1] (default: %(default)s)")
    cli.add_output_args(parser, outdir="outputs/depth2img-samples")
    cli.add_sampling_args(parser, steps=50, scale=9.0, n_iter=1, n_samples=1, sampler_choice=False)
    cli.add_model_args(parser, *default_model_paths("depth2img"))
    cli.add_performance_args(parser)
    return parser


def main(argv=None) -> None:
    cli.run_script(build_parser(), lambda opt: run_task(opt, DepthToImage), argv)


if __name__ == "__main__":
    main()
