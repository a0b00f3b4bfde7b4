"""Config resolution: presets, method recipes, overrides, and validation that names the bad field."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpsc_dfkd.config import Config, dump_yaml, from_dict, list_presets, parse_override, resolve, to_dict
from cpsc_dfkd.errors import UserError
from cpsc_dfkd.methods import RECIPES, list_methods


def test_every_preset_resolves():
    for name in list_presets():
        assert isinstance(resolve(name), Config)


def test_expected_presets_exist():
    names = set(list_presets())
    assert {"digits-demo", "fashion-mnist", "cifar10-resnet34-resnet18", "cifar100-resnet34-resnet18",
            "tiny-imagenet-resnet34-resnet18"} <= names


def test_preset_overrides_defaults_and_set_overrides_preset():
    config = resolve("digits-demo", ["distill.iterations=7", "loss.scl=0.25"])
    assert config.data.name == "digits"
    assert config.distill.iterations == 7
    assert config.loss.scl == 0.25


def test_method_recipe_applies_on_top_of_the_preset_and_user_values_win():
    dafl = resolve("digits-demo", ["distill.method=dafl"])
    assert dafl.generator.conditional is False
    assert dafl.loss.info_entropy == 5.0 and dafl.loss.scl == 0.0
    tuned = resolve("digits-demo", ["distill.method=dafl", "loss.info_entropy=2"])
    assert tuned.loss.info_entropy == 2.0


def test_every_method_resolves_and_ablations_remove_exactly_their_term():
    base = resolve("digits-demo")
    for name in RECIPES:
        resolve("digits-demo", [f"distill.method={name}"])
    assert resolve("digits-demo", ["distill.method=cpsc-no-scl"]).loss.scl == 0
    assert resolve("digits-demo", ["distill.method=cpsc-no-bn"]).loss.bn == 0
    assert resolve("digits-demo", ["distill.method=cpsc-no-ce"]).loss.ce == 0
    assert resolve("digits-demo", ["distill.method=cpsc-no-ikd"]).loss.ikd == 0
    no_cond = resolve("digits-demo", ["distill.method=cpsc-no-conditional"])
    assert no_cond.generator.conditional is False and no_cond.loss == base.loss
    assert resolve("fashion-mnist", ["distill.method=cpsc-from-scratch"]).student.init == "scratch"
    assert set(list_methods("ablation")) == {"cpsc-no-conditional", "cpsc-no-scl", "cpsc-no-ce", "cpsc-no-bn",
                                             "cpsc-no-ikd", "cpsc-from-scratch"}


def test_baselines_and_no_ikd_drop_the_students_ikd_even_when_the_preset_sets_it(tmp_path):
    preset = tmp_path / "strong-ikd.yaml"
    preset.write_text("data:\n  name: digits\nloss:\n  ikd: 0.5\n  student_ikd: 1.5\n")
    assert resolve(str(preset)).loss.student_ikd == 1.5
    assert resolve(str(preset), ["distill.method=cpsc-no-scl"]).loss.student_ikd == 1.5
    for name in ["cpsc-no-ikd", *list_methods("baseline")]:
        loss = resolve(str(preset), [f"distill.method={name}"]).loss
        assert loss.ikd == 0 and loss.student_ikd is None, name  # null follows ikd: no IKD in either step


@pytest.mark.parametrize("override, message", [
    ("distill.iteratons=5", "unknown config key 'distill.iteratons'; valid keys here are: .*iterations"),
    ("distill.iterations=abc", "'distill.iterations' must be an integer, got 'abc'"),
    ("distill.iterations=-1", "'distill.iterations' must be an integer >= 0"),
    ("distill.batch_size=1", "'distill.batch_size' must be an integer >= 2"),
    ("distill.augment_padding=-1", "'distill.augment_padding' must be an integer >= 0, or null"),
    ("loss.scl=-0.5", "'loss.scl' must be a weight >= 0"),
    ("loss.ce_feature_share=0", r"'loss.ce_feature_share' must be a number in \(0, 1\]"),
    ("loss.ce_feature_share=1.5", r"'loss.ce_feature_share' must be a number in \(0, 1\]"),
    ("generator.conditional=maybe", "'generator.conditional' must be true or false"),
    ("distill.method=magic", "unknown method 'magic'; valid methods are: cpsc-dfkd"),
    ("data.name=imagenet", "unknown data set 'imagenet'; valid data sets are: .*fashion-mnist"),
    ("student.arch=resnet19", "unknown model 'resnet19'; valid models are"),
    ("distill.schedule=linear", "'distill.schedule' must be one of 'constant', 'cosine'"),
    ("loss=3", "config section 'loss' must be a mapping"),
    ("iterations", "must look like section.key=value"),
    ("generator.lr=.nan", "'generator.lr' must be a number"),
])
def test_bad_values_name_the_field_and_what_is_allowed(override, message):
    with pytest.raises(UserError, match=message):
        resolve("digits-demo", [override])


def test_nesterov_without_momentum_says_how_to_fix_it():
    with pytest.raises(UserError, match="student_nesterov=true needs momentum: set distill.student_momentum > 0"):
        resolve("digits-demo", ["distill.student_nesterov=true", "distill.student_momentum=0"])


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(UserError, match="unknown preset 'cifar11'; valid presets are: .*digits-demo"):
        resolve("cifar11")


def test_a_yaml_file_can_be_a_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("distill:\n  iterations: 3\n")
    assert resolve(str(path)).distill.iterations == 3
    path.write_text("- not\n- a mapping\n")
    with pytest.raises(UserError, match="must be a mapping"):
        resolve(str(path))


def test_resolved_config_round_trips_through_yaml():
    import yaml

    config = resolve("fashion-mnist", ["distill.method=zskt"])
    assert from_dict(yaml.safe_load(dump_yaml(config))) == config


def test_integers_are_accepted_for_float_fields():
    assert resolve("digits-demo", ["loss.scl=1"]).loss.scl == 1.0


_keys = st.sampled_from(sorted(
    f"{section}.{key}" for section, values in to_dict(Config()).items() if isinstance(values, dict)
    for key in values) + ["seed", "device", "amp", "nosuch.key", "loss.nosuch"])
_values = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.booleans(), st.none(),
                    st.text(max_size=12), st.sampled_from(["cpsc-dfkd", "dafl", "digits", "kl", "cosine", "off"]))


@settings(max_examples=300, deadline=None)
@given(key=_keys, value=_values)
def test_any_override_either_resolves_to_a_valid_config_or_raises_a_user_error(key, value):
    import yaml

    text = f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
    try:
        config = resolve("digits-demo", [text])
    except UserError:
        return
    assert isinstance(config, Config)
    from_dict(to_dict(config))  # whatever was accepted also validates when read back


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_arbitrary_override_text_never_crashes_the_parser(text):
    try:
        parse_override(text)
    except UserError:
        pass
