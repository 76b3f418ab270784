"""Sample a class-conditional model: ``python scripts/sample_class.py --classes 3 "blue square" --scale 3``.

``--n_samples`` images of each class (numbers, or names from ``<checkpoint>.classes.txt``), guided
against the model's "no class" label; outputs, seeds and PNG parameters as txt2img.py (see README.md)."""
import argparse

from ldm.inference import runner
from ldm.inference.parsers import build_parser as _build_parser


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("class")


def main(argv=None) -> None:
    runner.main("class", argv)


if __name__ == "__main__":
    main()
