import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
exec(open(__import__("os").path.join(__import__("os").path.dirname(__file__), "ef.py")).read().split("idx = [")[0])
idx = [8,13,19,26,30,38,41,46, 0,5,10,15,20,25,33,44]
t0 = time.time(); C = Cases(idx); C.invert(); xs, zs = ef_invert(C); print(f"inverted (ddim, ef) in {time.time()-t0:.0f}s", flush=True)
for name, fn in [("ddim keep 0.3 scale 5", lambda: regen(C, 0.3, 5.0, C.empty)),
                 ("ef keep 0.3 scale 5", lambda: ef_regen(C, xs, zs, 0.3, 5.0, C.empty)),
                 ("ef keep 0.3 scale 7.5", lambda: ef_regen(C, xs, zs, 0.3, 7.5, C.empty))]:
    t0 = time.time(); z = fn(); C.score(z, f"{name} ({time.time()-t0:.0f}s)")
