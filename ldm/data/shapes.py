"""The "shapes" world: a procedural dataset of small images of one or two coloured shapes with
captions, depth maps, object masks, inpainting masks and low-resolution copies -- the data the
embedded default models (``configs/shapes/``, ``checkpoints/``) are trained on.

Each image holds one object ("a small green triangle", "an orange star") or two objects in a
clear spatial relation ("a red circle above a blue square", "a yellow star to the left of a
purple circle") on a plain or gradient background of low saturation. Everything is drawn with
numpy and PIL; example ``i`` depends only on ``(seed, split, i)``.

Composition is measured on colour/shape pairs the training split never shows:
:data:`HELD_OUT_COMBINATIONS` are left out of every training image and caption (``split="train"``)
and appear in the ``validation`` and ``test`` splits. ``docs/SHAPES.md`` lists them.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ldm.data.base import DatasetError

SHAPES = ("circle", "square", "triangle", "star")
# Fully saturated object colours; hues (degrees) 0, 29, 54, 129, 225, 280 keep >= 25 degrees apart.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 130, 20),
    "yellow": (240, 220, 30),
    "green": (40, 165, 60),
    "blue": (40, 85, 220),
    "purple": (150, 45, 210),
}
# Radius ranges (pixels on a 64 x 64 canvas) of the size classes; captions name small and large.
SIZE_RADII = {"small": (7.0, 9.0), "medium": (10.0, 12.0), "large": (14.0, 17.0)}
TWO_OBJECT_RADII = (7.0, 11.0)
RELATIONS = ("above", "below", "to the left of", "to the right of")
# Colour/shape pairs never shown in training, one per shape and at most one per colour.
HELD_OUT_COMBINATIONS = (("red", "triangle"), ("yellow", "square"), ("green", "circle"), ("blue", "star"))
# The class-conditional model's classes: every (colour, shape) pair, colour-major ("red circle" = 0).
CLASS_NAMES = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)
# Every word a caption can use (the shapes text encoder's vocabulary).
VOCABULARY = ("a", "an", "small", "large", *COLOURS, *SHAPES, "above", "below", "to", "the", "left", "right", "of")
SPLITS = ("train", "validation", "test")

CANVAS = 64.0            # geometry is defined on a 64 x 64 canvas and scaled to ``size``
SUPERSAMPLING = 4        # shapes are drawn 4x larger, then box-filtered: antialiased edges
EXTENT = 1.25            # no shape reaches further than EXTENT * radius from its centre
MARGIN = 2.0             # pixels between a shape and the image border
MIN_GAP = 3.0            # pixels between two objects along the relation's axis
BACKGROUND_SATURATION = 0.12
BACKGROUND_VALUES = (0.12, 0.92)
# Styles of ShapesDataset: "default" as above; "dark" maps each background colour's HSV value from
# BACKGROUND_VALUES to DARK_BACKGROUND_VALUES (hue, saturation, gradient and objects unchanged), a
# near-black the shipped models never saw: the style a LoRA learns in configs/shapes/lora-style.yaml.
STYLES = ("default", "dark")
DARK_BACKGROUND_VALUES = (0.0, 0.05)
# Disparity (larger = nearer, as MiDaS predicts): a floor that comes nearer towards the bottom of
# the image, objects standing OBJECT_DISPARITY nearer than the floor behind them.
FLOOR_DISPARITY = (0.2, 0.5)
OBJECT_DISPARITY = 0.5


@dataclass(frozen=True)
class ShapeObject:
    """One object: what it is (shape, colour name, size class) and where (centre and radius in
    pixels of the 64 x 64 canvas, its exact colour)."""
    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float
    rgb: Tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    """One or two objects, the relation of the first to the second, and the background: two RGB
    colours blended along ``gradient`` ("none", "vertical", "horizontal" or "diagonal")."""
    objects: Tuple[ShapeObject, ...]
    relation: Optional[str]
    background: Tuple[Tuple[int, int, int], Tuple[int, int, int]]
    gradient: str


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------
def noun_phrase(colour: str, shape: str, size: Optional[str] = None) -> str:
    """"a small green triangle", "an orange star", "a red circle" (no size word for medium)."""
    words = [w for w in (size if size in ("small", "large") else None, colour, shape) if w]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def caption_of(scene: Scene, with_size: bool = True) -> str:
    """The caption of a scene: one noun phrase, or "<first> <relation> <second>" (two-object
    captions never name sizes)."""
    first = scene.objects[0]
    if len(scene.objects) == 1:
        return noun_phrase(first.colour, first.shape, first.size if with_size else None)
    second = scene.objects[1]
    return f"{noun_phrase(first.colour, first.shape)} {scene.relation} {noun_phrase(second.colour, second.shape)}"


def is_held_out(colour: str, shape: str) -> bool:
    return (colour, shape) in HELD_OUT_COMBINATIONS


def combinations(held_out: Optional[bool] = None) -> List[Tuple[str, str]]:
    """All (colour, shape) pairs; only the held-out ones (True) or only the seen ones (False)."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    return [p for p in pairs if held_out is None or is_held_out(*p) == held_out]


# ---------------------------------------------------------------------------------------------
# Sampling scenes
# ---------------------------------------------------------------------------------------------
def class_label_of(scene: Scene) -> int:
    """The class of a scene: the index in :data:`CLASS_NAMES` of its (first) object's pair."""
    first = scene.objects[0]
    return CLASS_NAMES.index(f"{first.colour} {first.shape}")


def jittered_rgb(rng: np.random.Generator, colour: str) -> Tuple[int, int, int]:
    """The palette colour with small random changes of hue (+-4 degrees), saturation and value."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in COLOURS[colour]))
    h = (h + rng.uniform(-4.0, 4.0) / 360.0) % 1.0
    s = s * rng.uniform(0.85, 1.0)
    v = min(1.0, v * rng.uniform(0.85, 1.05))
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))


def background_rgb(rng: np.random.Generator) -> Tuple[int, int, int]:
    """A low-saturation colour (greys, beiges, slate blues) of any brightness."""
    h, s, v = rng.uniform(0.0, 1.0), rng.uniform(0.0, BACKGROUND_SATURATION), rng.uniform(*BACKGROUND_VALUES)
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))


def sample_background(rng: np.random.Generator):
    """(two colours, gradient direction); half of the backgrounds are plain."""
    gradient = ["none", "vertical", "horizontal", "diagonal"][rng.choice(4, p=[0.5, 0.2, 0.15, 0.15])]
    first = background_rgb(rng)
    second = first if gradient == "none" else background_rgb(rng)
    return (first, second), gradient


def sample_attributes(rng: np.random.Generator, split: str, exclude_colour: Optional[str] = None,
                      all_combinations: bool = False):
    """A (colour, shape) pair allowed in ``split``: training never draws a held-out pair unless
    ``all_combinations`` (the class-conditional model learns every class)."""
    colours = [c for c in COLOURS if c != exclude_colour]
    while True:
        colour, shape = colours[rng.integers(len(colours))], SHAPES[rng.integers(len(SHAPES))]
        if split != "train" or all_combinations or not is_held_out(colour, shape):
            return colour, shape


def place_single(rng: np.random.Generator, radius: float) -> Tuple[float, float]:
    low, high = EXTENT * radius + MARGIN, CANVAS - EXTENT * radius - MARGIN
    return rng.uniform(low, high), rng.uniform(low, high)


def relation_holds(relation: str, first: Tuple[float, float], second: Tuple[float, float]) -> bool:
    """Whether the point ``first`` is ``relation`` the point ``second`` (image coordinates, y down):
    along the relation's axis in the right direction, and more along that axis than across it."""
    dx, dy = first[0] - second[0], first[1] - second[1]
    if relation in ("above", "below"):
        return abs(dy) > abs(dx) and (dy < 0) == (relation == "above")
    return abs(dx) > abs(dy) and (dx < 0) == (relation == "to the left of")


def place_pair(rng: np.random.Generator, relation: str, r1: float, r2: float):
    """Centres of two objects clearly in ``relation``: apart by at least both extents plus MIN_GAP
    along the relation's axis and at most 0.6 times that across it."""
    vertical = relation in ("above", "below")
    while True:
        p1, p2 = place_single(rng, r1), place_single(rng, r2)
        along = abs(p1[1] - p2[1]) if vertical else abs(p1[0] - p2[0])
        across = abs(p1[0] - p2[0]) if vertical else abs(p1[1] - p2[1])
        if (along >= EXTENT * (r1 + r2) + MIN_GAP and across <= 0.6 * along
                and relation_holds(relation, p1, p2)):
            return p1, p2


def sample_object(rng: np.random.Generator, split: str, size: str, radius: float, centre,
                  exclude_colour: Optional[str] = None, all_combinations: bool = False) -> ShapeObject:
    colour, shape = sample_attributes(rng, split, exclude_colour, all_combinations)
    return ShapeObject(shape, colour, size, float(centre[0]), float(centre[1]), float(radius),
                       jittered_rgb(rng, colour))


def sample_scene(rng: np.random.Generator, split: str = "train", two_object_p: float = 0.5,
                 relations: Sequence[str] = RELATIONS, all_combinations: bool = False) -> Scene:
    """A random scene of ``split``: with probability ``two_object_p`` two objects of different
    colours in one of ``relations`` (all four by default), else one object of a random size class.
    ``all_combinations`` lets training draw the held-out pairs too."""
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    background, gradient = sample_background(rng)
    if rng.uniform() < two_object_p:
        relation = relations[rng.integers(len(relations))]
        r1, r2 = rng.uniform(*TWO_OBJECT_RADII, size=2)
        c1, c2 = place_pair(rng, relation, r1, r2)
        first = sample_object(rng, split, "medium", r1, c1, all_combinations=all_combinations)
        second = sample_object(rng, split, "medium", r2, c2, first.colour, all_combinations)
        return Scene((first, second), relation, background, gradient)
    size = list(SIZE_RADII)[rng.integers(len(SIZE_RADII))]
    radius = rng.uniform(*SIZE_RADII[size])
    only = sample_object(rng, split, size, radius, place_single(rng, radius), all_combinations=all_combinations)
    return Scene((only,), None, background, gradient)


def darkened_rgb(rgb: Tuple[int, int, int]) -> Tuple[int, int, int]:
    """``rgb`` with its HSV value moved linearly from BACKGROUND_VALUES to DARK_BACKGROUND_VALUES."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    (low, high), (dark_low, dark_high) = BACKGROUND_VALUES, DARK_BACKGROUND_VALUES
    v = dark_low + (dark_high - dark_low) * min(1.0, max(0.0, (v - low) / (high - low)))
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))


def styled(scene: Scene, style: str = "default") -> Scene:
    """The scene in one of :data:`STYLES` ("dark": its background darkened, everything else the same)."""
    if style == "default":
        return scene
    if style == "dark":
        return replace(scene, background=tuple(darkened_rgb(c) for c in scene.background))
    raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")


def scene_for(objects: Sequence[Tuple[str, str]], relation: Optional[str] = None, seed: int = 0,
              size: Optional[str] = None) -> Scene:
    """A scene with the given (colour, shape) objects (one, or two in ``relation``), placed and
    coloured at random from ``seed``: the ground truth for a prompt."""
    rng = np.random.default_rng([seed, 7])
    background, gradient = sample_background(rng)
    if len(objects) == 1:
        size = size or "medium"
        radius = rng.uniform(*SIZE_RADII[size])
        centre = place_single(rng, radius)
        (colour, shape), = objects
        return Scene((ShapeObject(shape, colour, size, *centre, radius, jittered_rgb(rng, colour)),),
                     None, background, gradient)
    if len(objects) != 2 or relation not in RELATIONS:
        raise ValueError(f"a scene has one object, or two in one of {RELATIONS}; got {len(objects)} "
                         f"objects and relation {relation!r}")
    radii = rng.uniform(*TWO_OBJECT_RADII, size=2)
    centres = place_pair(rng, relation, *radii)
    built = tuple(ShapeObject(s, c, "medium", *p, r, jittered_rgb(rng, c))
                  for (c, s), p, r in zip(objects, centres, radii))
    return Scene(built, relation, background, gradient)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def shape_outline(shape: str, cx: float, cy: float, radius: float) -> List[Tuple[float, float]]:
    """Polygon vertices of an upright square, triangle or five-pointed star centred at (cx, cy);
    areas are 2.9, 2.0 and 2.1 times radius^2 (circle: 3.1), extents at most EXTENT * radius."""
    if shape == "square":
        h = 0.85 * radius
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        outer = EXTENT * radius
        angles = np.deg2rad([-90.0, 30.0, 150.0])
        return [(cx + outer * np.cos(a), cy + outer * np.sin(a)) for a in angles]
    if shape == "star":
        outer, inner = 1.2 * radius, 0.6 * radius
        angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, outer, inner)
        return [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles)]
    raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def object_alpha(obj: ShapeObject, size: int) -> np.ndarray:
    """The object's coverage of each pixel (H, W) in [0, 1], antialiased by supersampling."""
    scale = size / CANVAS * SUPERSAMPLING
    canvas = Image.new("L", (size * SUPERSAMPLING, size * SUPERSAMPLING), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = obj.cx * scale, obj.cy * scale, obj.radius * scale
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(shape_outline(obj.shape, cx, cy, r), fill=255)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def background_image(scene: Scene, size: int) -> np.ndarray:
    """(H, W, 3) float background in [0, 1]: one colour, or a linear blend of two."""
    first, second = (np.asarray(c, dtype=np.float32) / 255.0 for c in scene.background)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    if scene.gradient == "vertical":
        weight = np.repeat(ramp[:, None], size, axis=1)
    elif scene.gradient == "horizontal":
        weight = np.repeat(ramp[None, :], size, axis=0)
    elif scene.gradient == "diagonal":
        weight = (ramp[:, None] + ramp[None, :]) / 2.0
    else:
        weight = np.zeros((size, size), dtype=np.float32)
    return first * (1.0 - weight[..., None]) + second * weight[..., None]


def disparity_map(coverage: np.ndarray) -> np.ndarray:
    """Disparity (H, W) in [0.2, 1]: the floor's FLOOR_DISPARITY ramp from top to bottom, plus
    OBJECT_DISPARITY where objects cover the pixel. :func:`estimate_disparity` inverts it."""
    size = coverage.shape[0]
    floor = np.linspace(*FLOOR_DISPARITY, size, dtype=np.float32)[:, None]
    return floor + OBJECT_DISPARITY * coverage


@dataclass
class Render:
    """A rendered scene: ``image`` (H, W, 3) float in [0, 1], ``alphas`` (objects, H, W) each
    object's coverage, ``depth`` (H, W) disparity."""
    image: np.ndarray
    alphas: np.ndarray
    depth: np.ndarray


def render_scene(scene: Scene, size: int = 64) -> Render:
    """Draw the background, then the objects in order (later ones on top)."""
    image = background_image(scene, size)
    alphas = np.stack([object_alpha(obj, size) for obj in scene.objects])
    for obj, alpha in zip(scene.objects, alphas):
        colour = np.asarray(obj.rgb, dtype=np.float32) / 255.0
        image = image * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    coverage = np.clip(alphas.sum(axis=0), 0.0, 1.0)
    return Render(image.astype(np.float32), alphas, disparity_map(coverage))


def estimate_disparity(image: np.ndarray) -> np.ndarray:
    """The renderer's disparity map recovered from a shapes image (H, W, 3) in [0, 1]: saturated
    pixels are objects. Exact on renders up to the antialiased edges."""
    maximum, minimum = image.max(axis=-1), image.min(axis=-1)
    saturation = (maximum - minimum) / np.maximum(maximum, 1e-6)
    coverage = np.clip((saturation - 0.2) / 0.4, 0.0, 1.0)
    return disparity_map(coverage.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Inpainting masks
# ---------------------------------------------------------------------------------------------
def inpainting_mask(rng: np.random.Generator, scene: Scene, size: int, object_p: float = 0.75) -> np.ndarray:
    """(H, W) mask, 1 where the image is to be repainted: with probability ``object_p`` the box
    around one object grown by 2-5 pixels, else a random rectangle 16-40 pixels a side."""
    scale = size / CANVAS
    if rng.uniform() < object_p:
        obj = scene.objects[rng.integers(len(scene.objects))]
        half = EXTENT * obj.radius + rng.uniform(2.0, 5.0)
        box = (obj.cx - half, obj.cy - half, obj.cx + half, obj.cy + half)
    else:
        w, h = rng.uniform(16.0, 40.0, size=2)
        x0, y0 = rng.uniform(0.0, CANVAS - w), rng.uniform(0.0, CANVAS - h)
        box = (x0, y0, x0 + w, y0 + h)
    return box_mask(box, size, scale)


def box_mask(box: Tuple[float, float, float, float], size: int, scale: float = 1.0) -> np.ndarray:
    """(H, W) float mask, 1 inside ``box`` = (x0, y0, x1, y1) given in canvas pixels times ``scale``."""
    x0, y0, x1, y1 = (int(round(v * scale)) for v in box)
    mask = np.zeros((size, size), dtype=np.float32)
    mask[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = 1.0
    return mask


def downsample(image: np.ndarray, factor: int = 4) -> np.ndarray:
    """(H, W, 3) float image in [0, 1] shrunk ``factor`` times with PIL's antialiased bicubic filter."""
    size = image.shape[0] // factor
    pil = Image.fromarray(np.round(image * 255.0).astype(np.uint8))
    return np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------
def to_signed(x: np.ndarray) -> np.ndarray:
    """[0, 1] -> [-1, 1] float32."""
    return (2.0 * x - 1.0).astype(np.float32)


class ShapesDataset(Dataset):
    """``length`` procedural examples (64 x 64 by default) of the shapes world, for every model
    of ``configs/shapes/``. Example ``i`` is drawn from ``numpy.random.default_rng([seed, split
    index, i])``, so it is the same on every machine and worker.

    Keys: ``image``/``jpg`` (H, W, 3) in [-1, 1]; ``txt``/``caption``; ``depth`` (H, W) disparity
    (nearer = larger); ``segmentation`` (H, W) int64, 0 background, k the k-th object;
    ``mask`` (H, W, 1) 1 = repaint and ``masked_image`` (H, W, 3) = image * (1 - mask) for
    inpainting; ``lr`` (H/4, W/4, 3) in [-1, 1], the bicubically downsampled image for x4
    upscaling; ``class_label`` the index in :data:`CLASS_NAMES` of the (first) object's colour and
    shape, ``human_label`` its name (as the originals' ImageNet examples). Training
    (``split="train"``) never shows a pair of :data:`HELD_OUT_COMBINATIONS` unless
    ``all_combinations`` (for the class-conditional model, which must learn every class).
    Single-object captions name the size class with probability ``size_word_p``; two-object
    scenes use the relations in ``relations`` (default: all four; a subset, e.g. only "above" and
    "to the left of", makes a curriculum in which the first-named object is always on top or
    left). ``crop_size`` (a multiple of 4) cuts every map to the same random square, e.g. to
    train a convolutional autoencoder on 32 x 32 patches at a quarter of the cost. ``style``
    "dark" draws the same scenes on near-black backgrounds (:func:`styled`; default "default"); a
    list of styles gives example ``i`` the style ``styles[i % len(styles)]`` (the same scenes, the
    styles taking turns), e.g. ``[default, dark]`` to fine-tune a decoder on both.
    """

    def __init__(self, length: int = 100_000, size: int = 64, seed: int = 0, split: str = "train",
                 two_object_p: float = 0.5, size_word_p: float = 0.7, mask_object_p: float = 0.75,
                 crop_size: Optional[int] = None, relations: Optional[Sequence[str]] = None,
                 all_combinations: bool = False, style: Union[str, Sequence[str]] = "default"):
        super().__init__()
        styles = (style,) if isinstance(style, str) else tuple(style)
        if not styles or any(s not in STYLES for s in styles):
            raise DatasetError(f"style must be one of {', '.join(STYLES)} or a list of them, got {style!r}")
        if split not in SPLITS:
            raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if length < 1:
            raise DatasetError(f"length must be at least 1, got {length}")
        if size < 16 or size % 4:
            raise DatasetError(f"size must be a multiple of 4 and at least 16, got {size}")
        for name, p in (("two_object_p", two_object_p), ("size_word_p", size_word_p),
                        ("mask_object_p", mask_object_p)):
            if not 0.0 <= p <= 1.0:
                raise DatasetError(f"{name} must be in [0, 1], got {p}")
        if crop_size is not None and (crop_size % 4 or not 4 <= crop_size <= size):
            raise DatasetError(f"crop_size must be a multiple of 4 in [4, {size}], got {crop_size}")
        relations = tuple(RELATIONS if relations is None else relations)
        unknown = [r for r in relations if r not in RELATIONS]
        if unknown or not relations:
            raise DatasetError(f"relations must be a non-empty list of {', '.join(RELATIONS)}; got {list(relations)}")
        self.relations = relations
        self.length, self.size, self.seed, self.split = length, size, seed, split
        self.crop_size, self.all_combinations, self.styles = crop_size, all_combinations, styles
        self.two_object_p, self.size_word_p, self.mask_object_p = two_object_p, size_word_p, mask_object_p

    def __len__(self) -> int:
        return self.length

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS.index(self.split), index])

    def scene(self, index: int) -> Scene:
        """The scene of example ``index`` (without rendering it)."""
        return self._sample_scene(self.rng(index), index)

    def _sample_scene(self, rng: np.random.Generator, index: int) -> Scene:
        scene = sample_scene(rng, self.split, self.two_object_p, self.relations, self.all_combinations)
        return styled(scene, self.styles[index % len(self.styles)])

    def __getitem__(self, index: int) -> dict:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length} examples")
        index %= self.length
        rng = self.rng(index)
        scene = self._sample_scene(rng, index)
        rendered = render_scene(scene, self.size)
        caption = caption_of(scene, with_size=rng.uniform() < self.size_word_p)
        mask = inpainting_mask(rng, scene, self.size, self.mask_object_p)[..., None]
        image = to_signed(rendered.image)
        segmentation = np.zeros((self.size, self.size), dtype=np.int64)
        for k, alpha in enumerate(rendered.alphas, start=1):
            segmentation[alpha >= 0.5] = k
        example = {"image": image, "jpg": image, "txt": caption, "caption": caption,
                   "depth": rendered.depth, "segmentation": segmentation,
                   "mask": mask, "masked_image": (image * (1.0 - mask)).astype(np.float32),
                   "lr": to_signed(downsample(rendered.image)),
                   "class_label": class_label_of(scene), "human_label": CLASS_NAMES[class_label_of(scene)]}
        return example if self.crop_size is None else self.cropped(example, rng)

    def cropped(self, example: dict, rng: np.random.Generator) -> dict:
        """Every map cut to the same random ``crop_size`` square, at an offset that is a multiple
        of 4 so that ``lr`` (a quarter of the size) is cut to the matching square."""
        y0, x0 = 4 * rng.integers(0, (self.size - self.crop_size) // 4 + 1, size=2)
        out = {}
        for key, value in example.items():
            if key == "lr":
                side = self.crop_size // 4
                out[key] = value[y0 // 4:y0 // 4 + side, x0 // 4:x0 // 4 + side]
            elif isinstance(value, np.ndarray):
                out[key] = value[y0:y0 + self.crop_size, x0:x0 + self.crop_size]
            else:
                out[key] = value
        return out
