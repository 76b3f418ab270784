"""Config reading: YAML merging, key=value overrides and target checks, each mistake one line."""
import sys
import types

import pytest
from omegaconf import OmegaConf

from ldm.training.config import (
    ConfigError,
    check_overrides,
    check_target,
    check_targets,
    iter_targets,
    load_yaml,
    merge_configs,
    parse_dotlist,
    split_lightning,
)


def test_overrides_set_nested_values_parsed_as_yaml():
    cfg = parse_dotlist(["model.params.x=3", "model.params.mult=[1,2]", "data.params.name=abc",
                         "model.params.flag=true", "data.params.train=null"])
    assert cfg.model.params.x == 3 and list(cfg.model.params.mult) == [1, 2]
    assert cfg.data.params.name == "abc" and cfg.model.params.flag is True and cfg.data.params.train is None


def test_later_configs_and_overrides_win():
    a = OmegaConf.create({"model": {"params": {"x": 1, "y": 2}}})
    b = OmegaConf.create({"model": {"params": {"y": 3}}})
    merged = merge_configs([a, b, parse_dotlist(["model.params.x=5"])])
    assert merged.model.params == {"x": 5, "y": 3}


@pytest.mark.parametrize("item, message", [
    ("model.params.x", "expected key=value"),
    ("model..x=1", "is not a dotted key"),
    ("=3", "is not a dotted key"),
    ("model.params.x=[1,2", "malformed override"),
    ("--foo", "unrecognized option --foo"),
])
def test_malformed_overrides_are_one_line_errors(item, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_dotlist([item])
    assert "\n" not in str(info.value)


def test_missing_and_unparsable_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_yaml(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  target: [unclosed\n")
    with pytest.raises(ConfigError, match=r"cannot parse .*bad.yaml \(line \d+\)"):
        load_yaml(str(bad))
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(str(listing))


def test_targets_are_found_everywhere_in_the_tree():
    cfg = OmegaConf.create({"model": {"target": "a.B", "params": {"unet_config": {"target": "c.D"},
                                                                 "items": [{"target": "e.F"}]}}})
    assert sorted(t for _, t in iter_targets(cfg)) == ["a.B", "c.D", "e.F"]


@pytest.mark.parametrize("target, message", [
    ("ldm.modules.nothing_here.Model", "there is no module 'ldm.modules.nothing_here'"),
    ("ldm.util.NoSuchClass", "module 'ldm.util' has no 'NoSuchClass'"),
    ("Model", "expected a dotted path"),
])
def test_unknown_targets_are_config_errors_naming_the_place(target, message):
    cfg = OmegaConf.create({"model": {"target": "torch.nn.Identity", "params": {"sub": {"target": target}}}})
    with pytest.raises(ConfigError, match=message) as info:
        check_targets(cfg)
    assert "model.params.sub" in str(info.value)


def test_a_module_that_exists_but_fails_to_import_is_not_hidden(monkeypatch, tmp_path):
    (tmp_path / "broken_ldm_test_module.py").write_text("import not_a_real_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "broken_ldm_test_module", raising=False)
    with pytest.raises(ModuleNotFoundError, match="not_a_real_dependency_xyz"):
        check_target("broken_ldm_test_module.Thing", "model")


def test_lightning_section_is_split_off_without_touching_the_input():
    cfg = OmegaConf.create({"model": {"target": "x.Y"}, "lightning": {"trainer": {"max_steps": 3}}})
    config, lightning = split_lightning(cfg)
    assert "lightning" not in config and lightning.trainer.max_steps == 3 and "lightning" in cfg
    config, lightning = split_lightning(OmegaConf.create({"model": {"target": "x.Y"}}))
    assert lightning == {}


def test_existing_classes_pass_the_target_check():
    fake = types.ModuleType("ldm_test_targets")
    fake.Thing = object
    sys.modules["ldm_test_targets"] = fake
    try:
        check_targets(OmegaConf.create({"data": {"target": "ldm_test_targets.Thing"},
                                        "lightning": {"logger": {"target": "pytorch_lightning.loggers.CSVLogger"}}}))
    finally:
        del sys.modules["ldm_test_targets"]


_BASE = OmegaConf.create({"model": {"params": {"size": 8, "lr": 1e-4, "ema": True, "name": "x", "mult": [1, 2],
                                               "sub": {"a": 1}, "none": None}}, "data": {}})


@pytest.mark.parametrize("item, message", [
    ("model.params.size=abc", r"model.params.size=abc: the config has a whole number there \(8\), not text"),
    ("model.params.size=2.5", r"a whole number there \(8\), not a number"),
    ("model.params.lr=fast", r"a number there \(0.0001\), not text"),
    ("model.params.ema=1", r"true/false there \(True\), not a whole number"),
    ("model.params.mult=3", r"a list there \(\[1, 2\]\), not a whole number"),
    ("model.params.sub=3", r"a section there \(\{'a': 1\}\), not a whole number"),
    ("model.params.sub.a=[1]", r"model.params.sub.a=\[1\]: the config has a whole number there"),
    ("key=abc", "override key=...: the config has no section 'key' .*nothing would read it"),
])
def test_overrides_of_another_kind_than_the_config_are_refused(item, message):
    with pytest.raises(ConfigError, match=message):
        check_overrides(_BASE, parse_dotlist([item]))


@pytest.mark.parametrize("item", ["model.params.size=16", "model.params.lr=1", "model.params.name=3",
                                  "model.params.sub=null", "model.params.none=[1]", "model.params.new=abc",
                                  "lightning.trainer.max_steps=3", "model.params.size=${model.params.sub.a}"])
def test_overrides_that_fit_pass(item):
    check_overrides(_BASE, parse_dotlist([item]))


def test_an_original_data_module_ldm_lacks_is_named_with_the_data_it_reads():
    with pytest.raises(ConfigError, match=r"^data.params.train: ldm.data.landscapes.RFWTrain reads the RFW landscapes, "
                                          r"and ldm has no module ldm.data.landscapes yet; train on your own"):
        check_target("ldm.data.landscapes.RFWTrain", "data.params.train")
