"""FFHQ and CelebA-HQ from local files, under the class names and parameters of taming-transformers'
``taming.data.faceshq`` (which the original configs name; ``ldm.util.config`` maps those paths here)
and latent-diffusion's ``ldm.data.faceshq``. As the originals, file lists name the images::

    <data root>/ffhqtrain.txt, ffhqvalidation.txt          paths relative to <data root>/ffhq/
    <data root>/celebahqtrain.txt, celebahqvalidation.txt  paths relative to <data root>/celebahq/

``<data root>`` is ``$LDM_DATA_ROOT``, else ``data``. FFHQ entries are image files; CelebA-HQ entries
are ``.npy`` arrays (1x3x1024x1024 uint8, the original's layout) or image files. Examples are
``{"image", "file_path_"}`` (only ``keys`` when given), ``image`` HxWx3 float32 in [-1, 1]: the shorter
side resized to ``size`` and the centre square cropped.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from ldm.data.image_paths import ConcatDatasetWithIndex, ImagePaths, check_first_listed, crop, data_root, read_file_list


class FacesBase(Dataset):
    """The examples of ``self.data``, restricted to ``keys`` when they are given."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.data = None
        self.keys = None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Dict[str, object]:
        example = self.data[i]
        return {k: example[k] for k in self.keys} if self.keys is not None else example


class _ListedFaces(FacesBase):
    """The images ``<data root>/<LIST>`` names, relative to ``<data root>/<FOLDER>``."""

    FOLDER = LIST = ""

    def __init__(self, size: Optional[int], keys: Optional[Sequence[str]] = None):
        super().__init__()
        root = os.path.join(data_root(), self.FOLDER)
        list_path = os.path.join(data_root(), self.LIST)
        layout = f"a text file of image paths relative to {root}/, one per line"
        paths = [os.path.join(root, p) for p in read_file_list(list_path, self.FOLDER, layout)]
        check_first_listed(paths, self.FOLDER, list_path, root)
        self.data = ImagePaths(paths=paths, size=size, random_crop=False)
        self.keys = keys


class CelebAHQTrain(_ListedFaces):
    FOLDER, LIST = "celebahq", "celebahqtrain.txt"


class CelebAHQValidation(_ListedFaces):
    FOLDER, LIST = "celebahq", "celebahqvalidation.txt"


class FFHQTrain(_ListedFaces):
    FOLDER, LIST = "ffhq", "ffhqtrain.txt"


class FFHQValidation(_ListedFaces):
    FOLDER, LIST = "ffhq", "ffhqvalidation.txt"


class _FacesHQ(Dataset):
    """CelebA-HQ (``class`` 0) then FFHQ (``class`` 1), each image cropped to ``crop_size`` when
    given (random for training, centred for validation); with ``coord`` the crop also cuts
    ``coord``, an HxWx1 map of each pixel's raster position / (H W) in the uncropped image."""

    PARTS = (CelebAHQTrain, FFHQTrain)
    RANDOM_CROP = True

    def __init__(self, size: Optional[int], keys: Optional[Sequence[str]] = None, crop_size: Optional[int] = None,
                 coord: bool = False):
        self.data = ConcatDatasetWithIndex([part(size=size, keys=keys) for part in self.PARTS])
        self.crop_size = crop_size
        self.coord = coord

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Dict[str, object]:
        example, dataset_index = self.data[i]
        if self.crop_size is not None:
            image = example["image"]
            h, w = image.shape[:2]
            stacked = image
            if self.coord:
                coord = (np.arange(h * w).reshape(h, w, 1) / (h * w)).astype(image.dtype)
                stacked = np.concatenate([image, coord], axis=2)
            window = crop(stacked, self.crop_size, self.crop_size, self.RANDOM_CROP)
            example["image"] = window[..., :image.shape[2]]
            if self.coord:
                example["coord"] = window[..., image.shape[2]:]
        example["class"] = dataset_index
        return example


class FacesHQTrain(_FacesHQ):
    PARTS = (CelebAHQTrain, FFHQTrain)
    RANDOM_CROP = True


class FacesHQValidation(_FacesHQ):
    PARTS = (CelebAHQValidation, FFHQValidation)
    RANDOM_CROP = False
