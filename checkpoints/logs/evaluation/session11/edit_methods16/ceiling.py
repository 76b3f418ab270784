import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from harness import *
t = time.time()
C = Cases(list(range(48)))
noise = ImageNoise(C.indices, torch.device("cpu"))
z = sample_from_noise(sampler, SamplingSettings(steps=50, eta=0.0, scale=5.0), [4, 16, 16], C.tgt, C.empty, noise)
px = (decode_latents(model, z).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
col = shp = 0; fails = []
for i, ((s, tg, sh), p) in enumerate(zip(C.rows, px)):
    f = detect_objects(p)
    c_ok = bool(f) and f[0].colour == tg; s_ok = bool(f) and f[0].shape == sh
    col += c_ok; shp += s_ok
    if not c_ok: fails.append(f"case {i} {tg} {sh}: read {[(o.colour, o.shape) for o in f]}")
print(f"txt2img of the 48 target prompts, seed = case index, DDIM 50, scale 5: colour read {col}/48, shape {shp}/48 ({time.time()-t:.0f} s)")
print("\n".join(fails), flush=True)
