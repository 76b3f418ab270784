"""x4 upscaling: ``python scripts/upscale.py --init-img small.png --prompt "..."
--config configs/stable-diffusion/x4-upscaling.yaml --ckpt <file>``. See docs/SCRIPTS.md."""
import argparse

from ldm.inference import cli
from ldm.inference.loading import default_model_paths
from ldm.inference.runner import run_task
from ldm.inference.tasks import Upscaling


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="upscale.py",
                                     description="Upscale an image 4x, guided by a prompt.")
    cli.add_prompt_args(parser, prompt="a high quality professional photograph")
    parser.add_argument("--init-img", type=str, default=None,
                        help="the low-resolution image; resized down to multiples of 8 (required)")
    parser.add_argument("--noise_level", "--noise-level", type=int, default=20,
                        help="noise added to the low-resolution image, 0 to the model's maximum "
                             "(349 for x4-upscaling.yaml); more noise lets the model invent more "
                             "detail (default: %(default)s)")
    cli.add_output_args(parser, outdir="outputs/upscale-samples")
    cli.add_sampling_args(parser, steps=50, scale=9.0, n_iter=1, n_samples=1)
    cli.add_model_args(parser, *default_model_paths("upscale"))
    cli.add_performance_args(parser)
    return parser


def main(argv=None) -> None:
    cli.run_script(build_parser(), lambda opt: run_task(opt, Upscaling), argv)


if __name__ == "__main__":
    main()
