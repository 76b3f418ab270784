"""Generation parameters as the text that AUTOMATIC1111's web UI writes into (and its "PNG Info"
tab reads from) a PNG ``parameters`` chunk, so that any image we write can be regenerated.

The format is three parts separated by newlines: the prompt (may span lines), an optional
``Negative prompt: ...`` part, and one last line of ``Key: value`` pairs joined by ``", "``;
a value holding ``,``, ``:`` or a newline is written as a JSON string.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Dict, Optional

NEGATIVE_PREFIX = "Negative prompt:"

# One "Key: value" pair of the last line; a value is a JSON string or runs up to the next comma.
_PAIR = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_MIN_PAIRS_IN_PARAMETER_LINE = 3


@dataclass
class GenerationParameters:
    """Everything needed to make one image again, in A1111's vocabulary."""
    prompt: str
    negative_prompt: str
    steps: int
    sampler: str
    cfg_scale: float
    seed: int
    width: int
    height: int
    model_hash: Optional[str] = None
    model_name: Optional[str] = None
    extra: Dict[str, object] = field(default_factory=dict)

    def pairs(self) -> Dict[str, object]:
        """The ``Key: value`` pairs in A1111's order; task-specific ones (e.g. "Denoising
        strength") come last."""
        pairs = {
            "Steps": self.steps,
            "Sampler": self.sampler,
            "CFG scale": self.cfg_scale,
            "Seed": self.seed,
            "Size": f"{self.width}x{self.height}",
            "Model hash": self.model_hash,
            "Model": self.model_name,
        }
        pairs.update(self.extra)
        return {key: value for key, value in pairs.items() if value is not None}

    def to_text(self) -> str:
        """The ``parameters`` text: prompt, negative prompt (only when given, as A1111 does),
        then the pairs line."""
        parts = [self.prompt]
        if self.negative_prompt:
            parts.append(f"{NEGATIVE_PREFIX} {self.negative_prompt}")
        parts.append(", ".join(f"{key}: {_quote(value)}" for key, value in self.pairs().items()))
        return "\n".join(parts)


def parse_parameters(text: str) -> Dict[str, str]:
    """Read a ``parameters`` text back into ``{"Prompt": ..., "Negative prompt": ..., key: value}``
    (values as strings, JSON-quoted ones unquoted; ``Size`` also as ``Size-1``/``Size-2``)."""
    lines = text.strip("\n").split("\n")
    pairs = _PAIR.findall(lines[-1])
    if len(pairs) >= _MIN_PAIRS_IN_PARAMETER_LINE:
        lines = lines[:-1]
    else:
        pairs = []
    prompt_lines, negative_lines = [], []
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX) and not negative_lines:
            negative_lines.append(line[len(NEGATIVE_PREFIX):].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    result = {"Prompt": "\n".join(prompt_lines), "Negative prompt": "\n".join(negative_lines)}
    for key, value in pairs:
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = json.loads(value)
        result[key.strip()] = value
    if "Size" in result and "x" in result["Size"]:
        result["Size-1"], result["Size-2"] = result["Size"].split("x", 1)
    return result


def _quote(value: object) -> str:
    text = str(value)
    if any(char in text for char in ",:\n\""):
        return json.dumps(text, ensure_ascii=False)
    return text

