"""ImageNet (ILSVRC2012) from a local folder, under latent-diffusion's class names and parameters:
``ImageNetTrain`` / ``ImageNetValidation`` (class-conditional LDMs) and ``ImageNetSRTrain`` /
``ImageNetSRValidation`` (super-resolution pairs, the KL autoencoder configs).

Layout (nothing is ever downloaded; docs/DATA.md)::

    <root>/train/n01440764/n01440764_10026.JPEG ...   one folder per synset (wnid)
    <root>/val/n01440764/ILSVRC2012_val_00000293.JPEG ...
    <root>/synset_human.txt                            optional: "n01440764 tench, Tinca tinca" lines
    <root>/index_synset.yaml                           optional: {0: n01440764, ...} (keep_orig_class_label)

``<root>`` is the ``data_root`` parameter, else ``$LDM_DATA_ROOT/imagenet`` (``data/imagenet``),
else the original's prepared cache ``$XDG_CACHE_HOME/autoencoders/data``, whose
``ILSVRC2012_train/data/<wnid>/`` and ``ILSVRC2012_validation/data/<wnid>/`` are read as well.

Class labels are the index of the synset among the split's sorted synsets, as the original (for the
full data set the standard 0-999 order); ``human_label`` comes from ``synset_human.txt`` beside the
split's folder when present, else it is the synset itself.
"""
from __future__ import annotations

import os
import pickle
from typing import Dict, List, Optional, Sequence

import yaml
from torch.utils.data import Dataset, Subset

from ldm.data.base import DatasetError
from ldm.data.image_paths import DATA_DOC, ImagePaths, data_root, missing_data
from ldm.data.superres import SuperresPairs

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
# A file the original leaves out of every file list.
IGNORED_FILES = frozenset({"n06596364_9591.JPEG"})
HUMAN_LABELS_FILE = "synset_human.txt"
INDEX_SYNSET_FILE = "index_synset.yaml"


def str_to_indices(string: str) -> List[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 7]``: comma-separated indices and ``a-b`` ranges that end before
    ``b``, as taming-transformers' ``sub_indices`` strings."""
    indices: List[int] = []
    for part in str(string).split(","):
        bounds = part.strip().split("-")
        try:
            if len(bounds) == 1:
                indices.append(int(bounds[0]))
            elif len(bounds) == 2:
                indices.extend(range(int(bounds[0]), int(bounds[1])))
            else:
                raise ValueError(part)
        except ValueError:
            raise DatasetError(f"sub_indices must look like '0-10,42' (ranges end before the second number), "
                               f"got {string!r}") from None
    return indices


def _read_index_synset(path_to_yaml: str) -> Dict[int, str]:
    if not os.path.isfile(path_to_yaml):
        raise DatasetError(f"ImageNet class index file {path_to_yaml} not found: keep_orig_class_label and "
                           f"sub_indices read a YAML mapping 0: n01440764, 1: ... there (see {DATA_DOC})")
    with open(path_to_yaml, encoding="utf-8") as handle:
        index_to_synset = yaml.safe_load(handle)
    if not isinstance(index_to_synset, dict):
        raise DatasetError(f"{path_to_yaml} must map class indices to synsets (0: n01440764, ...)")
    return {int(k): str(v) for k, v in index_to_synset.items()}


def synset2idx(path_to_yaml: str = os.path.join("data", INDEX_SYNSET_FILE)) -> Dict[str, int]:
    """Synset -> class index from an ``index_synset.yaml`` file (original function)."""
    return {synset: index for index, synset in _read_index_synset(path_to_yaml).items()}


def give_synsets_from_indices(indices: Sequence[int], path_to_yaml: str) -> List[str]:
    """The synsets of the given class indices, from an ``index_synset.yaml`` file."""
    index_to_synset = _read_index_synset(path_to_yaml)
    unknown = [i for i in indices if i not in index_to_synset]
    if unknown:
        raise DatasetError(f"{path_to_yaml} has no class index {unknown[0]}")
    return [index_to_synset[i] for i in indices]


def original_cache_root() -> str:
    """Where the original ImageNet classes prepared the data: ``$XDG_CACHE_HOME/autoencoders/data``."""
    cache = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    return os.path.join(cache, "autoencoders", "data")


def _list_synset_images(datadir: str) -> List[str]:
    """``<synset>/<file>`` for every image in the synset folders of ``datadir``, sorted."""
    relpaths = []
    for synset in sorted(e.name for e in os.scandir(datadir) if e.is_dir() and not e.name.startswith(".")):
        for entry in os.scandir(os.path.join(datadir, synset)):
            name = entry.name
            if name.lower().endswith(IMAGE_EXTENSIONS) and name not in IGNORED_FILES and not name.startswith("."):
                relpaths.append(f"{synset}/{name}")
    return sorted(relpaths)


def _read_human_labels(path: str) -> Dict[str, str]:
    with open(path, encoding="utf-8") as handle:
        pairs = [line.split(maxsplit=1) for line in handle if line.strip()]
    return {pair[0]: (pair[1].strip() if len(pair) > 1 else pair[0]) for pair in pairs}


class ImageNetBase(Dataset):
    """One split of ImageNet: examples ``{"image", "relpath", "synsets", "class_label",
    "human_label", "file_path_"}``, ``image`` HxWx3 float32 in [-1, 1] with its shorter side
    resized to ``config.size`` (default 256) and a square cropped from it (random for training).

    ``config`` keys, as the original: ``size``, ``<ClassName>/random_crop`` (e.g.
    ``ImageNetTrain: {random_crop: false}``), ``keep_orig_class_label`` (labels from
    ``index_synset.yaml`` instead of the sorted order), ``sub_indices`` (``"0-10,42"``: only these
    classes, given as indices of ``index_synset.yaml`` when it exists, else of the sorted synsets).
    ``process_images=False`` (ours: the original ignored it) leaves ``image`` out."""

    NAME = ""          # the split's folder in the original's cache (ILSVRC2012_train, ...)
    SPLIT_FOLDER = ""  # the split's folder in the usual layout (train, val)
    DEFAULT_RANDOM_CROP = False

    def __init__(self, process_images: bool = True, data_root: Optional[str] = None, config=None):
        self.config = _plain_dict(config)
        self.process_images = process_images
        self.data_root = data_root
        self.keep_orig_class_label = bool(self.config.get("keep_orig_class_label", False))
        split_config = self.config.get(type(self).__name__) or {}
        self.random_crop = bool(split_config.get("random_crop", self.DEFAULT_RANDOM_CROP))
        self.size = self.config.get("size", 256)
        self.datadir = self._find_datadir()
        self.root = os.path.dirname(self.datadir)
        self.idx2syn = os.path.join(self.root, INDEX_SYNSET_FILE)
        self._load()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Dict[str, object]:
        return self.data[i]

    def _candidate_roots(self) -> List[str]:
        if self.data_root:
            return [os.path.expanduser(str(self.data_root))]
        return [os.path.join(data_root(), "imagenet"), original_cache_root()]

    def _find_datadir(self) -> str:
        roots = self._candidate_roots()
        for root in roots:
            for folder in (os.path.join(root, self.SPLIT_FOLDER), os.path.join(root, self.NAME, "data")):
                if os.path.isdir(folder):
                    return folder
        example = os.path.join(roots[0], self.SPLIT_FOLDER, "<synset>", "*.JPEG")
        raise missing_data(f"ImageNet {self.SPLIT_FOLDER} images", f"{example}, e.g. {self.SPLIT_FOLDER}/n01440764/"
                           "n01440764_10026.JPEG", f"data_root={self.data_root!r} was given" if self.data_root else
                           "set it to the folder holding imagenet/, or give the dataset's data_root=<ImageNet folder>")

    def _filter_relpaths(self, relpaths: List[str]) -> List[str]:
        if "sub_indices" not in self.config:
            return relpaths
        indices = str_to_indices(self.config["sub_indices"])
        if os.path.isfile(self.idx2syn):
            wanted = set(give_synsets_from_indices(indices, self.idx2syn))
        else:
            present = sorted({p.split("/")[0] for p in relpaths})
            wanted = {present[i] for i in indices if 0 <= i < len(present)}
        return [p for p in relpaths if p.split("/")[0] in wanted]

    def _class_labels(self, synsets: List[str]) -> List[int]:
        if self.keep_orig_class_label:
            mapping = synset2idx(self.idx2syn)
            unknown = sorted(set(synsets) - set(mapping))
            if unknown:
                raise DatasetError(f"{self.idx2syn} has no class index for synset {unknown[0]}")
        else:
            mapping = {synset: i for i, synset in enumerate(sorted(set(synsets)))}
        return [mapping[s] for s in synsets]

    def _human_labels(self, synsets: List[str]) -> List[str]:
        path = os.path.join(self.root, HUMAN_LABELS_FILE)
        names = _read_human_labels(path) if os.path.isfile(path) else {}
        return [names.get(s, s) for s in synsets]

    def _load(self) -> None:
        self.relpaths = self._filter_relpaths(_list_synset_images(self.datadir))
        if not self.relpaths:
            raise DatasetError(f"no ImageNet images ({', '.join(IMAGE_EXTENSIONS)}) in the synset folders of "
                               f"{self.datadir} (expected <synset>/<file>.JPEG; see {DATA_DOC})")
        self.synsets = [p.split("/")[0] for p in self.relpaths]
        self.abspaths = [os.path.join(self.datadir, p) for p in self.relpaths]
        self.class_labels = self._class_labels(self.synsets)
        self.human_labels = self._human_labels(self.synsets)
        labels = {"relpath": self.relpaths, "synsets": self.synsets, "class_label": self.class_labels,
                  "human_label": self.human_labels}
        self.data = ImagePaths(self.abspaths, labels=labels, size=self.size, random_crop=self.random_crop,
                               load_images=self.process_images)


def _plain_dict(config) -> dict:
    if config is None:
        return {}
    if isinstance(config, dict):
        return dict(config)
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(config, resolve=True)
    if not isinstance(container, dict):
        raise DatasetError(f"config must be a mapping (size: 256, ...), got {type(container).__name__}")
    return container


class ImageNetTrain(ImageNetBase):
    """The ILSVRC2012 training split (random crops by default)."""
    NAME = "ILSVRC2012_train"
    SPLIT_FOLDER = "train"
    DEFAULT_RANDOM_CROP = True


class ImageNetValidation(ImageNetBase):
    """The ILSVRC2012 validation split, sorted into synset folders (centre crops by default)."""
    NAME = "ILSVRC2012_validation"
    SPLIT_FOLDER = "val"


class _NumbersOnly(pickle.Unpickler):
    """Reads a pickle of plain Python values; any class or function it names is refused, so
    nothing in the file can run."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"it names {module}.{name}")


def read_hr_indices(path: str, length: int) -> List[int]:
    """The indices of a split's high-resolution images (the original's ``data/imagenet_*_hr_indices.p``,
    a pickled list of ints), read without running anything the file holds."""
    try:
        with open(path, "rb") as handle:
            indices = _NumbersOnly(handle).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DatasetError(f"{path} is not a pickled list of image indices ({err}); remove it to use every "
                           "image") from None
    if not isinstance(indices, (list, tuple)) or not all(isinstance(i, int) for i in indices):
        raise DatasetError(f"{path} must hold a list of image indices, got {type(indices).__name__}")
    if indices and not 0 <= min(indices) <= max(indices) < length:
        raise DatasetError(f"{path} names image {max(indices)} of a split of {length} images: it was made for the "
                           "full ILSVRC2012 split; remove it to use every image")
    return list(indices)


class ImageNetSR(SuperresPairs):
    """Super-resolution pairs of ImageNet images (``image``, ``LR_image`` and the labels of the
    ImageNet examples). The base is the split's images whose shorter side is at least 256 as the
    original's ``data/imagenet_*_hr_indices.p`` lists them, when that file is in the data root;
    every image of the split otherwise."""

    BASE = ImageNetTrain
    HR_INDICES_FILE = ""

    def __init__(self, data_root: Optional[str] = None, **kwargs):
        self.data_root = data_root
        super().__init__(**kwargs)

    def get_base(self) -> Dataset:
        dataset = self.BASE(process_images=False, data_root=self.data_root)
        path = os.path.join(data_root(), self.HR_INDICES_FILE)
        if not os.path.isfile(path):
            print(f"{type(self).__name__}: no {path}; using all {len(dataset)} images")
            return dataset
        return Subset(dataset, read_hr_indices(path, len(dataset)))


class ImageNetSRTrain(ImageNetSR):
    BASE = ImageNetTrain
    HR_INDICES_FILE = "imagenet_train_hr_indices.p"


class ImageNetSRValidation(ImageNetSR):
    BASE = ImageNetValidation
    HR_INDICES_FILE = "imagenet_val_hr_indices.p"
