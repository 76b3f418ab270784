"""Learning-rate multipliers of the original training configs, used through
``torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=scheduler.schedule)``.

Each is a function of the optimizer step ``n``; use them with the learning rate they multiply
(``base_learning_rate`` in the config). ``verbosity_interval > 0`` prints the multiplier every
that many steps, as the original does.
"""
from __future__ import annotations

import math
from typing import List, Sequence


class LambdaWarmUpCosineScheduler:
    """Linear warm-up from ``lr_start`` to ``lr_max`` over ``warm_up_steps``, then a half-cosine
    from ``lr_max`` down to ``lr_min`` reached at step ``max_decay_steps`` (held afterwards)."""

    def __init__(self, warm_up_steps: int, lr_min: float, lr_max: float, lr_start: float,
                 max_decay_steps: int, verbosity_interval: int = 0):
        self.lr_warm_up_steps = warm_up_steps
        self.lr_start = lr_start
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.lr_max_decay_steps = max_decay_steps
        self.last_lr = 0.0
        self.verbosity_interval = verbosity_interval

    def schedule(self, n: int, **kwargs) -> float:
        if self.verbosity_interval > 0 and n % self.verbosity_interval == 0:
            print(f"current step: {n}, recent lr-multiplier: {self.last_lr}")
        if n < self.lr_warm_up_steps:
            lr = (self.lr_max - self.lr_start) / self.lr_warm_up_steps * n + self.lr_start
        else:
            t = (n - self.lr_warm_up_steps) / (self.lr_max_decay_steps - self.lr_warm_up_steps)
            t = min(t, 1.0)
            lr = self.lr_min + 0.5 * (self.lr_max - self.lr_min) * (1 + math.cos(t * math.pi))
        self.last_lr = lr
        return lr

    def __call__(self, n: int, **kwargs) -> float:
        return self.schedule(n, **kwargs)


class LambdaWarmUpCosineScheduler2:
    """Repeated cycles, one entry per cycle in each list: within cycle ``c`` of length
    ``cycle_lengths[c]``, a linear warm-up from ``f_start[c]`` to ``f_max[c]`` over
    ``warm_up_steps[c]`` steps, then a half-cosine down to ``f_min[c]`` at the cycle's end.
    Step ``n`` belongs to the first cycle whose cumulative end is >= n."""

    def __init__(self, warm_up_steps: Sequence[int], f_min: Sequence[float], f_max: Sequence[float],
                 f_start: Sequence[float], cycle_lengths: Sequence[int], verbosity_interval: int = 0):
        lengths = {len(warm_up_steps), len(f_min), len(f_max), len(f_start), len(cycle_lengths)}
        if len(lengths) != 1:
            raise ValueError("warm_up_steps, f_min, f_max, f_start and cycle_lengths need one entry "
                             f"per cycle, got lengths {len(warm_up_steps)}, {len(f_min)}, {len(f_max)}, "
                             f"{len(f_start)}, {len(cycle_lengths)}")
        self.lr_warm_up_steps = warm_up_steps
        self.f_start = f_start
        self.f_min = f_min
        self.f_max = f_max
        self.cycle_lengths = cycle_lengths
        self.cum_cycles: List[int] = [0]
        for length in cycle_lengths:
            self.cum_cycles.append(self.cum_cycles[-1] + length)
        self.last_f = 0.0
        self.verbosity_interval = verbosity_interval

    def find_in_interval(self, n: int) -> int:
        """Index of the cycle that step ``n`` falls in."""
        for interval, cycle_end in enumerate(self.cum_cycles[1:]):
            if n <= cycle_end:
                return interval
        raise ValueError(f"step {n} is past the end of the last cycle (step {self.cum_cycles[-1]}); "
                         "lengthen cycle_lengths")

    def _cycle_and_offset(self, n: int):
        cycle = self.find_in_interval(n)
        n = n - self.cum_cycles[cycle]
        if self.verbosity_interval > 0 and n % self.verbosity_interval == 0:
            print(f"current step: {n}, recent lr-multiplier: {self.last_f}, current cycle {cycle}")
        return cycle, n

    def _warm_up(self, cycle: int, n: int) -> float:
        return (self.f_max[cycle] - self.f_start[cycle]) / self.lr_warm_up_steps[cycle] * n + self.f_start[cycle]

    def _after_warm_up(self, cycle: int, n: int) -> float:
        t = (n - self.lr_warm_up_steps[cycle]) / (self.cycle_lengths[cycle] - self.lr_warm_up_steps[cycle])
        t = min(t, 1.0)
        return self.f_min[cycle] + 0.5 * (self.f_max[cycle] - self.f_min[cycle]) * (1 + math.cos(t * math.pi))

    def schedule(self, n: int, **kwargs) -> float:
        cycle, n = self._cycle_and_offset(n)
        if n < self.lr_warm_up_steps[cycle]:
            f = self._warm_up(cycle, n)
        else:
            f = self._after_warm_up(cycle, n)
        self.last_f = f
        return f

    def __call__(self, n: int, **kwargs) -> float:
        return self.schedule(n, **kwargs)


class LambdaLinearScheduler(LambdaWarmUpCosineScheduler2):
    """As :class:`LambdaWarmUpCosineScheduler2` but after warm-up the multiplier falls linearly,
    ``f_min + (f_max - f_min) * (L - n) / L`` with ``n`` counted from the cycle start and ``L``
    the cycle length (so it starts below ``f_max`` by the warm-up fraction)."""

    def _after_warm_up(self, cycle: int, n: int) -> float:
        length = self.cycle_lengths[cycle]
        return self.f_min[cycle] + (self.f_max[cycle] - self.f_min[cycle]) * (length - n) / length
