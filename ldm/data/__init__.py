"""Datasets: image folders with captions (``image_folder``), the procedural shapes world
(``shapes``), base classes (``base``) and helpers (``util``), and the data modules of the original
configs reading local copies of their data sets (``imagenet``, ``lsun``, ``faceshq``, ``openimages``,
``laion``; layouts in docs/DATA.md).

:data:`ORIGINAL_DATA_MODULES` names the data modules of the original repositories that ldm does
not include, with the data each reads, so that a config naming one is told what it needs.
"""

ORIGINAL_DATA_MODULES = {
    "ldm.data.landscapes": "the RFW landscapes",
    "ldm.data.previews": "the previews set",
}
