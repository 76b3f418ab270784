"""Does ``ldm.evaluation.inception`` compute what pytorch-fid computes? Both networks get the same
random weights (a state dict in the format of ``pt_inception-2015-12-05-6726825d.pth``) and the
same uint8 images; the script reports the largest differences of the 2048-d pool features and of
the bias-free 1008-class logits.

pytorch-fid needs torchvision, which the project never installs, so the reference runs in a
throwaway environment outside the repository, e.g.::

    python -m venv /work/venv-tv
    /work/venv-tv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy
    /work/venv-tv/bin/pip install --no-deps pytorch-fid        # only its inception.py is used
    python benchmarks/inception_vs_pytorch_fid.py --reference-python /work/venv-tv/bin/python

The project side writes the weights and images to a temporary folder and runs this same file in
the other interpreter with ``--worker FOLDER`` (that mode imports only torch, numpy and pytorch-fid).
pytorch-fid's strict ``load_state_dict`` also checks that every key and shape of our network
matches torchvision's Inception-v3 with the FID blocks. Negative control: our network with the plain
Inception-v3 pooling, which must differ. Logged output: benchmarks/logs/.
"""
import argparse
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
# (count, height, width): 64 x 64 and 100 x 150 go through the bilinear resize, 299 x 299 does not.
IMAGE_SETS = ((3, 64, 64), (2, 299, 299), (2, 100, 150))


def random_fid_weights(shapes, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """Random weights that keep activations of order one through the 94 conv layers: He-normal
    convolutions, batch norms with random affine parameters and running statistics."""
    generator = torch.Generator().manual_seed(seed)
    weights = OrderedDict()
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            continue
        if name.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            value = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
        elif name.endswith("running_var") or name.endswith("bn.weight"):
            value = 0.5 + torch.rand(shape, generator=generator)
        elif name == "fc.weight":
            value = torch.randn(shape, generator=generator) / shape[1] ** 0.5
        else:  # bn.bias, running_mean, fc.bias
            value = 0.1 * torch.randn(shape, generator=generator)
        weights[name] = value
    return weights


def test_images(seed: int = 0):
    """Shapes-world renders (64 x 64, smooth with edges) and uniform noise at the other sizes."""
    from ldm.data.shapes import render_scene, sample_scene

    rng = np.random.default_rng(seed)
    sets = []
    for count, height, width in IMAGE_SETS:
        if height == 64:
            renders = [render_scene(sample_scene(rng, "test"), size=64).image for _ in range(count)]
            sets.append(np.stack([(np.asarray(r) * 255).round().astype(np.uint8) for r in renders]))
        else:
            sets.append(rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8))
    return sets


def ours(weights_path: Path, image_sets):
    from ldm.evaluation.inception import inception_outputs, load_fid_inception

    model = load_fid_inception(str(weights_path))
    outputs = [inception_outputs(model, [images], len(images), desc="ours") for images in image_sets]
    return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])


def worker(folder: Path) -> None:
    """The reference side: pytorch-fid's InceptionV3 wrapper (resize, [-1, 1], blocks 0-3) and its
    fid_inception_v3 for the fc weight, with the weights file instead of the download."""
    import pytorch_fid.inception as reference

    state_dict = torch.load(folder / "weights.pth", weights_only=True)
    reference.load_state_dict_from_url = lambda *args, **kwargs: state_dict
    wrapper = reference.InceptionV3([3]).eval()
    fc_weight = reference.fid_inception_v3().fc.weight.detach()
    features, logits = [], []
    with np.load(folder / "images.npz") as data, torch.no_grad():
        for key in sorted(data.files):
            images = torch.from_numpy(data[key]).permute(0, 3, 1, 2).float() / 255.0
            pooled = wrapper(images)[0].flatten(1)
            features.append(pooled.double().numpy())
            logits.append((pooled @ fc_weight.T).double().numpy())
    np.savez(folder / "reference.npz", features=np.concatenate(features), logits=np.concatenate(logits))


def plain_pooling_features(weights_path: Path, image_sets) -> np.ndarray:
    """Negative control: our network with the plain Inception-v3 pooling instead of the TF graph's
    (zero padding counted in the average pools, an average pool in Mixed_7c), as torchvision's
    unpatched blocks compute; the FID network is not this, so it must differ from pytorch-fid."""
    import ldm.evaluation.inception as inception

    tf_pool = inception._tf_average_pool
    inception._tf_average_pool = lambda x: torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)
    try:
        model = inception.load_fid_inception(str(weights_path))
        model.Mixed_7c.max_pool = False
        return np.concatenate([inception.inception_outputs(model, [images], len(images), desc="plain")[0]
                               for images in image_sets])
    finally:
        inception._tf_average_pool = tf_pool


def compare(reference_python: str) -> None:
    import platform

    from ldm.evaluation.inception import FIDInceptionV3

    shapes = {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.save(random_fid_weights(shapes), folder / "weights.pth")
        image_sets = test_images()
        np.savez(folder / "images.npz", **{f"set{i}": images for i, images in enumerate(image_sets)})
        subprocess.run([reference_python, str(Path(__file__).resolve()), "--worker", str(folder)], check=True)
        with np.load(folder / "reference.npz") as data:
            ref_features, ref_logits = data["features"], data["logits"]
        features, logits = ours(folder / "weights.pth", image_sets)
        control = plain_pooling_features(folder / "weights.pth", image_sets)
    versions = subprocess.run([reference_python, "-c", "from importlib.metadata import version; print(*(version(p) "
                               "for p in ('torch', 'torchvision', 'pytorch-fid')))"],
                              capture_output=True, text=True, check=True).stdout.split()
    print(f"ours: torch {torch.__version__}, python {platform.python_version()}; reference: torch {versions[0]}, "
          f"torchvision {versions[1]}, pytorch-fid {versions[2]}")
    print(f"images: {', '.join(f'{n} x {h}x{w}' for n, h, w in IMAGE_SETS)} (float32, CPU)")
    for name, a, b in (("pool features (N, 2048)", features, ref_features), ("logits (N, 1008)", logits, ref_logits)):
        diff = np.abs(a - b).max()
        print(f"{name}: max |ours - pytorch-fid| = {diff:.3e}, max |value| = {np.abs(b).max():.3e}, "
              f"relative {diff / np.abs(b).max():.3e}")
    print(f"negative control, plain Inception-v3 pooling (ours, as torchvision's unpatched blocks) vs pytorch-fid: "
          f"max |difference| of pool features = "
          f"{np.abs(control - ref_features).max():.3e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-python", default="/work/venv-tv/bin/python",
                        help="python of the environment with torchvision and pytorch-fid")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    opt = parser.parse_args()
    torch.set_num_threads(1)
    if opt.worker:
        worker(opt.worker)
    else:
        compare(opt.reference_python)


if __name__ == "__main__":
    sys.exit(main())
