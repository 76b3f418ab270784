"""ldm.util.meta_init: random fills of meta tensors do nothing (and import no torch._dynamo);
tensors on real devices are initialised as usual."""
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from ldm.util.meta_init import no_random_init_on_meta

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_building_on_meta_imports_no_torch_dynamo_and_gives_the_shapes():
    source = ("import sys, torch\nfrom torch import nn\n"
              "from ldm.util.meta_init import no_random_init_on_meta\n"
              "with torch.device('meta'), no_random_init_on_meta():\n"
              "    emb = nn.Embedding(7, 4)\n"
              "    lin = nn.Linear(4, 3)\n"
              "    nn.init.trunc_normal_(lin.weight, std=0.02)\n"
              "    lin.weight.normal_()\n"
              "print(emb.weight.is_meta, tuple(emb.weight.shape), lin.weight.is_meta,\n"
              "      'torch._dynamo' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "(7,", "4)", "True", "False"]


def test_tensors_on_the_cpu_are_initialised_as_without_it():
    torch.manual_seed(0)
    expected = nn.Embedding(7, 4).weight.detach().clone()
    torch.manual_seed(0)
    with no_random_init_on_meta():
        got = nn.Embedding(7, 4).weight.detach()
        noise = torch.empty(5).normal_()
    assert torch.equal(got, expected)
    assert noise.abs().sum() > 0
