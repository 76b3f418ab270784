"""OpenImages super-resolution pairs under the class names of latent-diffusion's bsr_sr config
(``SuperresOpenImagesAdvancedTrain`` / ``Validation``; the original module was never released, so
the parameters are those the config gives, the same as ``ImageNetSR``'s).

Layout: the images of each split anywhere below ``<data root>/openimages/train/`` and
``<data root>/openimages/validation/`` (``.jpg``, ``.jpeg``, ``.png``, ``.webp``, ``.bmp``), as the
OpenImages download tools leave them; ``<data root>`` is ``$LDM_DATA_ROOT``, else ``data``.
Examples: ``{"image", "LR_image", "relpath", "file_path_"}`` (see :mod:`ldm.data.superres`).
"""
from __future__ import annotations

import os

from torch.utils.data import Dataset

from ldm.data.base import DatasetError
from ldm.data.image_folder import IMAGE_EXTENSIONS, _list_images
from ldm.data.image_paths import DATA_DOC, ImagePaths, data_root, missing_data
from ldm.data.superres import SuperresPairs


def openimages_split(split: str) -> ImagePaths:
    """The file paths (no pixels) of one OpenImages split folder."""
    folder = os.path.join(data_root(), "openimages", split)
    if not os.path.isdir(folder):
        raise missing_data(f"OpenImages {split} images", f"image files below {folder}/")
    relpaths = _list_images(folder, recursive=True)
    if not relpaths:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) below {folder} (see {DATA_DOC})")
    return ImagePaths([os.path.join(folder, p) for p in relpaths], labels={"relpath": relpaths}, load_images=False)


class SuperresOpenImagesAdvancedTrain(SuperresPairs):
    def get_base(self) -> Dataset:
        return openimages_split("train")


class SuperresOpenImagesAdvancedValidation(SuperresPairs):
    def get_base(self) -> Dataset:
        return openimages_split("validation")
