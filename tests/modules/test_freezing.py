"""ldm/modules/freezing.py: frozen submodules stay in eval mode and, when frozen, get no gradients;
the original's ``disabled_train`` is one function under both of its original names."""
import torch

from ldm.modules.freezing import disabled_train, freeze_module, keep_in_eval_mode


def test_the_original_names_serve_the_one_disabled_train():
    from ldm.models.diffusion import ddpm
    from ldm.modules.encoders import modules

    assert ddpm.disabled_train is disabled_train and modules.disabled_train is disabled_train


def test_a_module_kept_in_eval_mode_ignores_its_parents_train_switch_but_still_learns():
    parent = torch.nn.Sequential(keep_in_eval_mode(torch.nn.Linear(2, 2)), torch.nn.Dropout(0.5))
    parent.train()
    assert not parent[0].training and parent[1].training
    assert all(p.requires_grad for p in parent[0].parameters())


def test_a_frozen_module_gets_no_gradients_and_stays_in_eval_mode():
    layer = freeze_module(torch.nn.Linear(2, 2))
    assert layer.train(True) is layer and not layer.training
    assert not any(p.requires_grad for p in layer.parameters())
