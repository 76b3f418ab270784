"""Image to image (SDEdit with DDIM): ``python scripts/img2img.py --init-img in.png --strength 0.8
--prompt "..." --config <yaml> --ckpt <file>``. See docs/SCRIPTS.md."""
import argparse

from ldm.inference import cli
from ldm.inference.loading import default_model_paths
from ldm.inference.runner import run_task
from ldm.inference.tasks import ImageToImage


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="img2img.py",
                                     description="Redraw an image following a text prompt.")
    cli.add_prompt_args(parser, prompt="a painting of a virus monster playing guitar")
    parser.add_argument("--init-img", type=str, nargs="?", default=None,
                        help="the image to start from; resized down to multiples of 64 (required)")
    parser.add_argument("--strength", type=float, default=0.8,
                        help="how much to change the image, in [0, 1]: 1 ignores it, 0 keeps it "
                             "(default: %(default)s)")
    cli.add_output_args(parser, outdir="outputs/img2img-samples")
    cli.add_sampling_args(parser, steps=50, scale=9.0, n_iter=1, n_samples=2, sampler_choice=False)
    cli.add_model_args(parser, *default_model_paths("img2img"))
    cli.add_performance_args(parser)
    return parser


def main(argv=None) -> None:
    cli.run_script(build_parser(), lambda opt: run_task(opt, ImageToImage), argv)


if __name__ == "__main__":
    main()
