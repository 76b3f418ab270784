"""Depth-conditioned image to image: ``python scripts/depth2img.py --init-img in.png --depth
depth.png --prompt "..." --config configs/stable-diffusion/v2-midas-inference.yaml --ckpt <file>``.
Without --depth the model estimates the depth itself where it can. See README.md."""
import argparse

from ldm.inference import runner
from ldm.inference.parsers import build_parser as _build_parser


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("depth2img")


def main(argv=None) -> None:
    runner.main("depth2img", argv)


if __name__ == "__main__":
    main()
