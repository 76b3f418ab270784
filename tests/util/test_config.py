"""The alias table for third-party class paths the original configs name: resolved by
instantiate_from_config and by main.py's target check, and judged as what they resolve to when a
config the user did not name is read."""
import pytest

from ldm.modules.losses.vqperceptual import VQLPIPSWithDiscriminator
from ldm.training.config import ConfigError, check_target
from ldm.util import UntrustedConfigError, get_obj_from_str, instantiate_from_config, is_model_target
from ldm.util.config import ORIGINAL_TARGET_ALIASES, only_model_targets


def test_every_alias_resolves_to_an_ldm_class():
    for original, ours in ORIGINAL_TARGET_ALIASES.items():
        assert get_obj_from_str(original) is get_obj_from_str(ours), original
        check_target(original, "model.params.lossconfig")


def test_the_taming_vq_loss_of_the_original_vq_configs_builds_ours():
    loss = instantiate_from_config({"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                                    "params": {"disc_start": 0, "disc_weight": 0.75, "codebook_weight": 1.0,
                                               "perceptual_weight": 0.0}})
    assert isinstance(loss, VQLPIPSWithDiscriminator) and loss.discriminator_weight == 0.75


def test_an_untrusted_config_may_name_the_loss_alias_but_not_a_data_alias():
    assert is_model_target("taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator")
    assert not is_model_target("taming.data.faceshq.FFHQTrain")
    with only_model_targets("downloaded/config.yaml"):
        assert get_obj_from_str("taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator") is \
            VQLPIPSWithDiscriminator
        with pytest.raises(UntrustedConfigError, match="names taming.data.faceshq.FFHQTrain, which is not a model"):
            get_obj_from_str("taming.data.faceshq.FFHQTrain")


def test_other_third_party_paths_stay_unknown():
    with pytest.raises(ConfigError, match="there is no module 'taming'"):
        check_target("taming.data.imagenet.ImageNetTrain", "data.params.train")
