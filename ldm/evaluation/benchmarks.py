"""The shapes-world measurements reported in ``docs/SHAPES.md``, one function per model: each
returns a :class:`Report` (a Markdown table plus the raw numbers). Inputs are rendered from the
``test`` split, which holds every colour/shape pair, seeded so the figures are reproducible."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import torch

from ldm.data.shapes import CLASS_NAMES, COLOURS, SHAPES, ShapesDataset, box_mask, downsample, render_scene, scene_for
from ldm.evaluation import generation
from ldm.evaluation.adherence import (
    PromptCase,
    format_table,
    mean_accuracies,
    mirrored,
    psnr,
    same_layout,
    score_detections,
    score_image,
    single_object_cases,
    summarize,
    two_object_cases,
)
from ldm.evaluation.detector import SATURATION_MIN, VALUE_MIN, detect_objects, hsv
from ldm.inference.images import to_uint8

EXTENT_MARGIN = 3.0   # pixels added around an object's extent to make an inpainting box


@dataclass
class Report:
    """A measurement: title, settings, Markdown table and the numbers in it."""
    title: str
    table: str
    numbers: Dict[str, float]
    settings: Dict = field(default_factory=dict)

    def markdown(self) -> str:
        settings = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        heading = f"### {self.title}\n\n"
        return f"{heading}{settings}\n\n{self.table}\n" if settings else f"{heading}{self.table}\n"


def prompt_cases(single_repeats: int, two_count: int, seed: int = 0) -> List[PromptCase]:
    """The txt2img prompt set: every pair ``single_repeats`` times, ``two_count`` seen and
    ``two_count`` held-out two-object prompts."""
    return (single_object_cases(single_repeats) + two_object_cases(two_count, held_out=False, seed=seed)
            + two_object_cases(two_count, held_out=True, seed=seed))


def ground_truth_render(case: PromptCase, seed: int) -> np.ndarray:
    """A render (H, W, 3) in [0, 1] of the prompt, placed at random from ``seed``; single objects
    take the small, medium and large size classes in turn."""
    size = ("small", "medium", "large")[seed % 3] if case.kind == "single" else None
    return render_scene(scene_for(case.objects, case.relation, seed=seed, size=size)).image


def detector_accuracy(single_repeats: int = 8, two_count: int = 96, seed: int = 0) -> Report:
    """The detector's own accuracy on ground-truth renders of the txt2img prompt set."""
    cases = prompt_cases(single_repeats, two_count, seed)
    scores = [score_image(case, ground_truth_render(case, seed + i)) for i, case in enumerate(cases)]
    rows = summarize(cases, scores)
    return Report("Detector on ground-truth renders", format_table(rows), _row_numbers(rows),
                  {"renders": len(cases)})


def txt2img_adherence(pipe, single_repeats: int = 4, two_count: int = 48, seed: int = 0, steps: int = 20,
                      scale: float = 5.0, sampler: str = "dpm", batch_size: int = 16) -> Report:
    """Colour, shape and position accuracy of generated images, seen vs held-out pairs."""
    cases = prompt_cases(single_repeats, two_count, seed)
    images = generation.txt2img(pipe, [c.text for c in cases], seed, steps, scale, batch_size, sampler)
    scores = [score_image(case, image) for case, image in zip(cases, images)]
    rows = summarize(cases, scores)
    return Report("Text-to-image prompt adherence", format_table(rows), _row_numbers(rows),
                  generation.sampling_settings(steps, scale, sampler, seed))


def relation_sensitivity(pipe, count: int = 48, seed: int = 0, steps: int = 20, scale: float = 5.0,
                         sampler: str = "dpm", batch_size: int = 16) -> Report:
    """Does the relation word or the starting noise decide where the objects go? ``count``
    seen two-object prompts and their mirrors, image k of both from the same noise: position
    accuracy of each, and how often the pair has the same layout (0% for a model that follows
    the relation word, 100% for one whose layout the noise alone decides)."""
    cases = two_object_cases(count, held_out=False, seed=seed)
    mirrors = [mirrored(case) for case in cases]
    images = generation.txt2img(pipe, [c.text for c in cases], seed, steps, scale, batch_size, sampler)
    mirror_images = generation.txt2img(pipe, [c.text for c in mirrors], seed, steps, scale, batch_size, sampler)
    found = [detect_objects(image) for image in images]
    mirror_found = [detect_objects(image) for image in mirror_images]
    position = np.mean([score_detections(c, f).position for c, f in zip(cases, found)])
    mirror_position = np.mean([score_detections(c, f).position for c, f in zip(mirrors, mirror_found)])
    same = [same_layout(c, f, m) for c, f, m in zip(cases, found, mirror_found)]
    judged = [s for s in same if s is not None]
    same_fraction = float(np.mean(judged)) if judged else float("nan")
    table = ("| prompt pairs | position (as written) | position (mirrored) | both found | same layout, same noise |\n"
             "|---|---|---|---|---|\n"
             f"| {count} | {100 * position:.1f}% | {100 * mirror_position:.1f}% | {len(judged)} | "
             f"{100 * same_fraction:.1f}% |")
    numbers = {"position": float(position), "mirrored_position": float(mirror_position),
               "pairs_judged": float(len(judged)), "same_layout": same_fraction}
    return Report("Relation sensitivity (each prompt and its mirror from the same noise)", table, numbers,
                  generation.sampling_settings(steps, scale, sampler, seed))


def _row_numbers(rows) -> Dict[str, float]:
    out = {}
    for row in rows:
        for name in ("colour", "shape", "position", "all_correct"):
            if getattr(row, name) is not None:
                out[f"{row.group}/{name}"] = getattr(row, name)
    return out


def _test_scenes(count: int, seed: int, two_object_p: float = 0.0):
    data = ShapesDataset(length=count, seed=seed, split="test", two_object_p=two_object_p)
    return [data.scene(i) for i in range(count)]


def autoencoder_psnr(autoencoder, count: int = 256, seed: int = 0) -> Report:
    """Reconstruction PSNR of the autoencoder on renders of the test split (never trained on)."""
    data = ShapesDataset(length=count, seed=seed, split="test")
    images = np.stack([(data[i]["image"] + 1.0) / 2.0 for i in range(count)])
    recon = reconstruct(autoencoder, images).astype(np.float32) / 255.0
    values = np.array([psnr(a, b) for a, b in zip(images, recon)])
    table = ("| images | mean PSNR | median | 5th percentile |\n|---|---|---|---|\n"
             f"| {count} | {values.mean():.2f} dB | {np.median(values):.2f} dB | {np.percentile(values, 5):.2f} dB |")
    return Report("Autoencoder reconstruction", table, {"psnr": float(values.mean())}, {"test renders": count})


@torch.no_grad()
def reconstruct(autoencoder, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Autoencoder reconstructions (posterior mode) of ``images`` (N, H, W, 3) in [0, 1], as uint8
    the way the scripts convert (``255 * clamp((x + 1) / 2)``, truncated)."""
    device = next(autoencoder.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[start:start + batch_size], dtype=np.float32))
        x = (2.0 * x - 1.0).permute(0, 3, 1, 2).to(device)
        decoded = autoencoder.decode(autoencoder.encode(x).mode())
        out.append(to_uint8(torch.clamp((decoded.float() + 1.0) / 2.0, 0.0, 1.0)))
    return np.concatenate(out)


def _other_object(rng: np.random.Generator, colour: str, shape: str):
    """A (colour, shape) pair differing from the given one in both colour and shape."""
    colours = [c for c in COLOURS if c != colour]
    shapes = [s for s in SHAPES if s != shape]
    return colours[rng.integers(len(colours))], shapes[rng.integers(len(shapes))]


def inpainting_accuracy(pipe, count: int = 96, seed: int = 0, steps: int = 20, scale: float = 5.0,
                        sampler: str = "dpm", batch_size: int = 16) -> Report:
    """Replace the one object of a test render by another (both colour and shape differ): the
    mask is the object's box grown by EXTENT_MARGIN pixels and the prompt names the new object.
    Inside the mask: colour and shape accuracy of the largest detected object centred there.
    Outside: PSNR against the original render."""
    rng = np.random.default_rng(seed)
    scenes = _test_scenes(count, seed)
    images, masks, cases = [], [], []
    for scene in scenes:
        obj = scene.objects[0]
        half = 1.25 * obj.radius + EXTENT_MARGIN
        masks.append(box_mask((obj.cx - half, obj.cy - half, obj.cx + half, obj.cy + half), 64))
        images.append(render_scene(scene).image)
        cases.append(PromptCase((_other_object(rng, obj.colour, obj.shape),)))
    images, masks = np.stack(images), np.stack(masks)
    out = generation.inpaint(pipe, images, masks, [c.text for c in cases], seed, steps, scale, batch_size, sampler)
    scores, fidelity = [], []
    for case, image, mask, original in zip(cases, out, masks, images):
        inside = [o for o in detect_objects(image) if mask[int(round(o.cy)), int(round(o.cx))] > 0]
        scores.append(score_detections(case, inside))
        fidelity.append(psnr(image.astype(np.float32) / 255.0, original, mask=mask < 0.5))
    acc = mean_accuracies(scores)
    numbers = {"colour": acc["colour"], "shape": acc["shape"], "psnr_outside": float(np.mean(fidelity))}
    table = ("| inpaintings | colour (in mask) | shape (in mask) | PSNR outside mask |\n|---|---|---|---|\n"
             f"| {count} | {100 * acc['colour']:.1f}% | {100 * acc['shape']:.1f}% | {numbers['psnr_outside']:.2f} dB |")
    return Report("Inpainting", table, numbers, generation.sampling_settings(steps, scale, sampler, seed))


def foreground_iou(image: np.ndarray, segmentation: np.ndarray) -> float:
    """IoU of the detector's foreground (saturated pixels) with the rendered objects' pixels."""
    _, saturation, value = hsv(image.astype(np.float32) / 255.0)
    found = (saturation > SATURATION_MIN) & (value > VALUE_MIN)
    truth = segmentation > 0
    union = (found | truth).sum()
    return float((found & truth).sum() / union) if union else 1.0


def depth_adherence(pipe, count: int = 96, seed: int = 0, steps: int = 20, scale: float = 5.0,
                    batch_size: int = 16) -> Report:
    """Depth maps of test renders (one or two objects) with prompts that recolour the objects,
    generated from pure noise (strength 1, DDIM as depth2img samples): the generated objects must
    take the depth map's silhouettes (shape accuracy, foreground IoU) and the prompt's colours
    (colour accuracy), and keep the relation of two objects."""
    rng = np.random.default_rng(seed)
    data = ShapesDataset(length=count, seed=seed, split="test", two_object_p=0.5)
    renders, depths, cases, segmentations = [], [], [], []
    for i in range(count):
        scene, example = data.scene(i), data[i]
        colours = rng.choice(list(COLOURS), size=len(scene.objects), replace=False)
        cases.append(PromptCase(tuple((str(c), o.shape) for c, o in zip(colours, scene.objects)), scene.relation))
        renders.append((example["image"] + 1.0) / 2.0)
        depths.append(example["depth"])
        segmentations.append(example["segmentation"])
    out = generation.depth2img(pipe, np.stack(renders), np.stack(depths), [c.text for c in cases], seed, steps,
                               scale, batch_size)
    scores = [score_image(case, image) for case, image in zip(cases, out)]
    ious = [foreground_iou(image, seg) for image, seg in zip(out, segmentations)]
    acc = mean_accuracies(scores)
    numbers = {**acc, "foreground_iou": float(np.mean(ious))}
    position = f"{100 * acc['position']:.1f}%" if "position" in acc else "-"
    table = ("| depth maps | colour | shape | position (two objects) | foreground IoU |\n|---|---|---|---|---|\n"
             f"| {count} | {100 * acc['colour']:.1f}% | {100 * acc['shape']:.1f}% | {position} | "
             f"{numbers['foreground_iou']:.3f} |")
    settings = generation.sampling_settings(steps, scale, "ddim (strength 1)", seed)
    return Report("Depth-conditioned generation", table, numbers, settings)


def bicubic_upscale(low_res: np.ndarray, factor: int = 4) -> np.ndarray:
    """(h, w, 3) float in [0, 1] -> (4h, 4w, 3) with PIL's bicubic filter."""
    from PIL import Image

    pil = Image.fromarray(np.round(low_res * 255.0).astype(np.uint8))
    size = (low_res.shape[1] * factor, low_res.shape[0] * factor)
    return np.asarray(pil.resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


def upscaler_psnr(pipe, count: int = 96, seed: int = 0, steps: int = 20, scale: float = 5.0,
                  noise_level: int = 20, sampler: str = "dpm", batch_size: int = 16) -> Report:
    """PSNR of x4 upscaled 16x16 test renders against the 64x64 originals, beside bicubic
    upsampling of the same inputs; the prompt is the render's caption."""
    data = ShapesDataset(length=count, seed=seed, split="test")
    examples = [data[i] for i in range(count)]
    originals = np.stack([(e["image"] + 1.0) / 2.0 for e in examples])
    low_res = np.stack([downsample(o) for o in originals])
    out = generation.upscale(pipe, low_res, [e["txt"] for e in examples], noise_level, seed, steps, scale,
                             batch_size, sampler)
    model_psnr = np.mean([psnr(o.astype(np.float32) / 255.0, t) for o, t in zip(out, originals)])
    bicubic = np.mean([psnr(bicubic_upscale(lr), t) for lr, t in zip(low_res, originals)])
    numbers = {"psnr": float(model_psnr), "psnr_bicubic": float(bicubic)}
    table = ("| images | upscaler PSNR | bicubic PSNR |\n|---|---|---|\n"
             f"| {count} | {model_psnr:.2f} dB | {bicubic:.2f} dB |")
    return Report("x4 upscaling (16x16 -> 64x64)", table, numbers,
                  generation.sampling_settings(steps, scale, sampler, seed, {"noise level": noise_level}))



def class_accuracy(pipe, repeats: int = 4, seed: int = 0, steps: int = 20, scale: float = 3.0, sampler: str = "dpm",
                   batch_size: int = 16) -> Report:
    """Colour and shape accuracy of the class-conditional model: every class of
    :data:`CLASS_NAMES` ``repeats`` times, the largest detected object against the class."""
    labels = [label for _ in range(repeats) for label in range(len(CLASS_NAMES))]
    images = generation.class_samples(pipe, labels, seed, steps, scale, batch_size, sampler)
    colour = shape = 0
    for label, image in zip(labels, images):
        expected_colour, expected_shape = CLASS_NAMES[label].split()
        found = detect_objects(image)
        colour += bool(found) and found[0].colour == expected_colour
        shape += bool(found) and found[0].shape == expected_shape
    numbers = {"colour": colour / len(labels), "shape": shape / len(labels)}
    table = ("| images | colour | shape |\n|---|---|---|\n"
             f"| {len(labels)} | {100 * numbers['colour']:.1f}% | {100 * numbers['shape']:.1f}% |")
    settings = generation.sampling_settings(steps, scale, sampler, seed)
    return Report("Class-conditional accuracy", table, numbers, settings)


def _one_object_reading(images: np.ndarray) -> Dict[str, float]:
    """How often the detector reads exactly one object, and how many of the 24 classes appear."""
    found = [detect_objects(image) for image in images]
    single = [objects[0] for objects in found if len(objects) == 1]
    return {"valid": len(single) / len(images), "classes": float(len({(o.colour, o.shape) for o in single}))}


def pixel_ddpm_validity(pipe, count: int = 96, seed: int = 0,
                        samplings=(("ddim", 50, 1.0), ("ddim", 50, 0.0), ("ddpm", 1000, 0.0)),
                        batch_size: int = 16) -> Report:
    """Unconditional samples of the pixel-space DDPM read as one valid shape (exactly one object
    detected), per ``(sampler, steps, eta)``, beside the same reading of ``count`` ground-truth
    renders of its size. DDIM at eta 1 is sample_diffusion.py's default (as the original's ``-e``),
    eta 0 its deterministic variant; ``ddpm`` with as many steps as the model has timesteps is
    ancestral sampling (``-v``)."""
    size = pipe.spec.default_pixel_size
    renders = ShapesDataset(length=count, size=size, seed=seed, split="test", two_object_p=0.0)
    truth = np.stack([np.round((renders[i]["image"] + 1.0) * 127.5).astype(np.uint8) for i in range(count)])
    rows = {"ground-truth renders": _one_object_reading(truth)}
    for sampler, steps, eta in samplings:
        images = generation.unconditional_samples(pipe, count, seed, steps, sampler, eta, batch_size)
        name = f"{sampler}, {steps} steps" + (f", eta {eta:g}" if sampler == "ddim" else "")
        rows[name] = _one_object_reading(images)
    lines = [f"| {name} | {100 * row['valid']:.1f}% | {row['classes']:.0f} / {len(CLASS_NAMES)} |"
             for name, row in rows.items()]
    table = "| images | one valid shape | colour/shape classes seen |\n|---|---|---|\n" + "\n".join(lines)
    numbers = {f"{name}/{key}": value for name, row in rows.items() for key, value in row.items()}
    return Report(f"Pixel-space DDPM samples ({size}x{size})", table, numbers, {"images": count, "seed": seed})
