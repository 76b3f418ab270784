"""Batched exploration harness for issue 22 (not committed): same steps as Edit.generate, batched."""
import sys, time, importlib.util
import numpy as np, torch
from PIL import Image
REPO = __import__("pathlib").Path(__file__).resolve().parents[5]
sys.path.insert(0, str(REPO))
import ldm
from ldm.data.shapes import noun_phrase, render_scene, scene_for
from ldm.inference.images import load_image
from ldm.inference.pipeline import encode_image, decode_latents, sample_from_noise, SamplingSettings
from ldm.models.diffusion.seeding import ImageNoise
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion import inversion as inv
from ldm.evaluation.detector import detect_objects
spec = importlib.util.spec_from_file_location("bench", REPO / "benchmarks/edit_inversion.py")
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)

torch.set_grad_enabled(False)
pipe = ldm.load("edit", device="cpu")
model = pipe.model
sampler = DDIMSampler(model)

class Cases:
    def __init__(self, indices):
        self.indices = indices
        cases = bench.edit_cases(48)
        self.rows = [cases[i] for i in indices]
        self.renders = [render_scene(scene_for([(s, sh)], seed=i)) for i, (s, t, sh) in zip(indices, self.rows)]
        imgs = []
        for r in self.renders:
            im = Image.fromarray((r.image * 255).round().astype(np.uint8))
            imgs.append(load_image(im, pipe.spec.pixel_multiple))
        self.images = torch.cat(imgs)
        self.noise = ImageNoise(indices, torch.device("cpu"))
        self.x0 = encode_image(model, self.images, self.noise)
        self.src = model.get_learned_conditioning([noun_phrase(s, sh) for s, t, sh in self.rows])
        self.tgt = model.get_learned_conditioning([noun_phrase(t, sh) for s, t, sh in self.rows])
        self.empty = model.get_learned_conditioning([""] * len(indices))
        self.traj = None

    def invert(self, steps=50, cond=None):
        self.traj = inv.ddim_invert(sampler, self.x0, self.src if cond is None else cond, steps)
        return self.traj

    def score(self, z, label=""):
        px = (decode_latents(model, z).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        kept, col, both = [], [], []
        fails = []
        for (s, t, sh), r, p in zip(self.rows, self.renders, px):
            o = bench.iou(bench.foreground(p), r.alphas[0] > 0.5)
            f = detect_objects(p)
            c = f[0].colour if f else None
            kept.append(o >= 0.8); col.append(c == t); both.append(kept[-1] and col[-1])
            if not both[-1]:
                fails.append(f"{s[:3]}>{t[:3]} {sh[:3]} {o:.2f} {c}")
        n = len(kept)
        print(f"{label}: mask {sum(kept)}/{n} colour {sum(col)}/{n} both {sum(both)}/{n} meanIoU {np.mean([0]) if 0 else ''}", flush=True)
        print("   fails:", "; ".join(fails), flush=True)
        return px, kept, col

def regen(C, keep, scale, uc, steps=50, eta=0.0, mask=None, fill=None):
    plan = inv.plan_edit(keep, steps, 50, model.num_timesteps)
    return inv.regenerate(sampler, C.traj, plan, C.tgt, uc, scale, eta, C.noise.generators, mask=mask, fill_noise=fill)
