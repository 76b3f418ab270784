import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from ef import *  # noqa: F401,F403 (the harness, ef_invert, ef_regen with its mask)
idx = [8,13,19,26,30,38,41,46, 0,5,10,15,20,25,33,44]
t0 = time.time()
C = Cases(idx)
mask = inv.diffedit_mask(sampler, C.x0, C.src, C.tgt, 0.5, 0.5, 10, C.noise.generators)
xs, zs = ef_invert(C)
print(f"mask+ef inverted in {time.time()-t0:.0f}s; mask mean {float(mask.mean()):.3f}", flush=True)
for keep, dil in [(0.2, 1), (0.3, 1), (0.2, 0), (0.1, 1)]:
    t0 = time.time()
    z = ef_regen(C, xs, zs, keep, 5.0, C.empty, mask=inv.dilate_mask(mask, dil))
    C.score(z, f"ef+diffedit keep {keep} dilate {dil} ({time.time()-t0:.0f}s)")
