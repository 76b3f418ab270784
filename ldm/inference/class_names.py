"""Class names of a class-conditional checkpoint, and the ``--classes`` of ``scripts/sample_class.py``
(numbers, or names where the checkpoint has them).

A checkpoint declares its class names in a text file beside it, ``<name>.classes.txt``
(``model.ckpt`` -> ``model.classes.txt``), one name per line, line i naming class i. A file of its
own rather than an entry of the config: the original ``ClassEmbedder`` takes no names, the original
configs stay as they are, and names can be put beside any downloaded checkpoint. One line may hold
several names of its class separated by commas, as ImageNet lists write them ("tench, Tinca
tinca"); any of them selects the class. ``--class_names FILE`` reads another file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ldm.inference.errors import UsageError

CLASS_NAMES_SUFFIX = ".classes.txt"
DEFAULT_CLASS_COUNT = 4


def class_names_beside(ckpt: str) -> Path:
    """Where the class names of ``ckpt`` are: ``<ckpt without its suffix>.classes.txt``."""
    return Path(ckpt).with_suffix(CLASS_NAMES_SUFFIX)


def read_class_names(path: Union[str, Path], n_classes: int, flag: str = "--class_names") -> List[str]:
    """The names of ``path``, one per line (line i: class i; blank lines name nothing). More lines
    than the model has classes is an error naming the file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"{flag}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{flag}: cannot read {path} ({err})") from None
    names = [line.strip() for line in lines]
    while names and not names[-1]:
        names.pop()
    if len(names) > n_classes:
        raise UsageError(f"{flag}: {path} names {len(names)} classes but the model has {n_classes}")
    return names


def class_names_of(ckpt: Optional[str], given: Optional[str], n_classes: int) -> List[str]:
    """The names ``--class_names`` gives, else those beside the checkpoint, else none."""
    if given is not None:
        return read_class_names(given, n_classes)
    if ckpt is not None and class_names_beside(ckpt).is_file():
        return read_class_names(class_names_beside(ckpt), n_classes, flag=f"class names beside {ckpt}")
    return []


def _normalised(name: str) -> str:
    return " ".join(name.lower().split())


def _name_index(names: Sequence[str]) -> Dict[str, List[int]]:
    """Every name (the whole line and each comma-separated part), normalised -> its classes."""
    index: Dict[str, List[int]] = {}
    for label, line in enumerate(names):
        for alias in {_normalised(line), *(_normalised(part) for part in line.split(","))} - {""}:
            index.setdefault(alias, []).append(label)
    return index


def parse_classes(values: Sequence[Union[int, str]], names: Sequence[str], n_classes: int) -> List[int]:
    """``--classes`` as class numbers: each value a number in [0, n_classes) or a name of
    ``names`` (case and spacing ignored)."""
    if isinstance(values, (str, int)):
        values = [values]
    if not values:
        raise UsageError("--classes: give at least one class")
    index = _name_index(names)
    labels = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UsageError(f"--classes: a class is a number or a name, got {value!r}")
        label = int(value) if isinstance(value, int) or value.strip().lstrip("-").isdigit() else None
        if label is None:
            matches = index.get(_normalised(value), [])
            if len(matches) != 1:
                raise UsageError(_unknown_name_message(value, matches, names, n_classes))
            label = matches[0]
        if not 0 <= label < n_classes:
            raise UsageError(f"--classes: class {label} is out of range; this model has classes 0 to "
                             f"{n_classes - 1} (the last is its 'no class' label when it was trained for guidance)")
        labels.append(label)
    return labels


def _unknown_name_message(value: str, matches: List[int], names: Sequence[str], n_classes: int) -> str:
    if matches:
        return f"--classes: {value!r} names several classes ({', '.join(map(str, matches))}); give the number"
    if not names:
        return (f"--classes: {value!r} is not a class number in [0, {n_classes - 1}], and the model has no class "
                f"names (put them in <checkpoint>{CLASS_NAMES_SUFFIX} beside it, one per line, or pass "
                f"--class_names FILE)")
    examples = ", ".join(repr(name) for name in names[:3] if name)
    return f"--classes: unknown class {value!r}; give a number in [0, {n_classes - 1}] or a name such as {examples}"


def default_classes(n_classes: int, count: int = DEFAULT_CLASS_COUNT) -> List[int]:
    """``count`` classes spread evenly over the model's classes, leaving out its last one (the
    "no class" label of models trained for classifier-free guidance)."""
    top = max(n_classes - 2, 0)
    return sorted({int(label) for label in np.round(np.linspace(0, top, min(count, top + 1)))})


def class_text(label: int, names: Sequence[str]) -> str:
    """What a class is called in the images' parameters: its name (first of a line's names),
    else its number; either selects it again with ``--classes``."""
    if label < len(names) and names[label]:
        return names[label].split(",")[0].strip()
    return str(label)
