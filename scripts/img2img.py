"""Image to image (SDEdit with DDIM): ``python scripts/img2img.py --init-img in.png --strength 0.8
--prompt "..." --config <yaml> --ckpt <file>``. See docs/SCRIPTS.md."""
import argparse

from ldm.inference import runner
from ldm.inference.parsers import build_parser as _build_parser


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("img2img")


def main(argv=None) -> None:
    runner.main("img2img", argv)


if __name__ == "__main__":
    main()
