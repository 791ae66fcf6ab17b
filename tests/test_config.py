"""stackdistill/config.py: dotted overrides and `--config=FILE:ARG` variants."""

import pytest

from stackdistill import config as config_lib


def test_overrides_from_a_mapping_set_values_as_given():
    c = config_lib.apply_overrides(
        config_lib.base_config(), {"optim.learning_rate": 3e-4, "data.path": "1e-3", "seed": 7}
    )
    assert c.optim.learning_rate == 3e-4 and c.data.path == "1e-3" and c.seed == 7


def test_overrides_from_strings_read_python_literals_else_text():
    c = config_lib.apply_overrides(
        config_lib.base_config(),
        ["optim.learning_rate=1e-3", "distill.teacher_layers=(2, 4)", "data.path=/tmp/x"],
    )
    assert c.optim.learning_rate == 1e-3
    assert tuple(c.distill.teacher_layers) == (2, 4) and c.data.path == "/tmp/x"


@pytest.mark.parametrize(
    "overrides,error,names",
    [
        ({"optim.learnig_rate": 1.0}, KeyError, "optim.learnig_rate"),
        ({"nosuch.field": 1}, KeyError, "'nosuch'"),
        ({"seed.x": 1}, KeyError, "seed.x"),
        (["optim.learning_rate"], ValueError, "optim.learning_rate"),
    ],
)
def test_overrides_name_the_key_they_cannot_set(overrides, error, names):
    with pytest.raises(error, match=names):
        config_lib.apply_overrides(config_lib.base_config(), overrides)


def test_config_arg_uses_the_same_overrides():
    c = config_lib.apply_arg(config_lib.base_config(), "stacking=top,optim.learning_rate=1e-3")
    assert c.stacking.method == "top" and c.optim.learning_rate == 1e-3
    with pytest.raises(KeyError, match="optim.nope"):
        config_lib.apply_arg(config_lib.base_config(), "optim.nope=1")
