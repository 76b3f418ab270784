import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from harness import *
idx = [8,13,19,26,30,38,41,46, 0,5,10,15,20,25,33,44]
t = time.time()
C = Cases(idx); C.invert()
print(f"inverted in {time.time()-t:.0f}s", flush=True)
for keep, scale, neg in [(0.4, 5, "src"), (0.4, 5, "empty"), (0.4, 10, "src"), (0.5, 5, "src"), (0.3, 5, "src")]:
    t = time.time()
    z = regen(C, keep, scale, C.src if neg == "src" else C.empty)
    C.score(z, f"keep {keep} scale {scale} neg {neg} ({time.time()-t:.0f}s)")
