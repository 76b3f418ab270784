"""AddMiDaS: feeds the sample's [-1, 1] image to the MiDaS transform as [0, 1]."""
import sys
import types

import numpy as np
import torch

from ldm.data.util import AddMiDaS


def test_add_midas_passes_a_0_1_image_to_the_transform_and_stores_midas_in(monkeypatch):
    seen = {}

    def load_midas_transform(model_type):
        seen["model_type"] = model_type
        return lambda sample: {"image": sample["image"].transpose(2, 0, 1) * 10}

    fake = types.ModuleType("ldm.modules.midas.api")
    fake.load_midas_transform = load_midas_transform
    monkeypatch.setitem(sys.modules, "ldm.modules.midas.api", fake)
    sample = AddMiDaS("dpt_hybrid")({"jpg": torch.tensor([[[-1.0, 0.0, 1.0]]])})
    assert seen["model_type"] == "dpt_hybrid"
    assert np.allclose(sample["midas_in"][:, 0, 0], [0.0, 5.0, 10.0])
