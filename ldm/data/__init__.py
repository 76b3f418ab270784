"""Datasets: image folders with captions (``image_folder``), the procedural shapes world
(``shapes``), base classes (``base``) and helpers (``util``).

:data:`ORIGINAL_DATA_MODULES` names the data modules of the original repositories that ldm does
not include, with the data each reads, so that a config naming one is told what it needs.
"""

ORIGINAL_DATA_MODULES = {
    "ldm.data.imagenet": "ImageNet (ILSVRC2012)",
    "ldm.data.lsun": "LSUN (bedrooms, churches)",
    "ldm.data.faceshq": "CelebA-HQ / FFHQ",
    "ldm.data.openimages": "OpenImages",
    "ldm.data.laion": "LAION webdataset shards",
    "ldm.data.landscapes": "the RFW landscapes",
    "ldm.data.previews": "the previews set",
}
