"""Edit an image by DDIM inversion: ``python scripts/edit.py --init-img in.png --source-prompt
"a red circle" --prompt "a blue circle" [--keep 0.4 --scale 5 --steps 50 --inversion-steps 50]``.
See README.md ("Editing by DDIM inversion")."""
import argparse

from ldm.inference import runner
from ldm.inference.parsers import build_parser as _build_parser


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("edit")


def main(argv=None) -> None:
    runner.main("edit", argv)


if __name__ == "__main__":
    main()
