"""The resume guard's field comparison, checked by hand-written configs."""

import pytest

from stackdistill import resume

OLD = {
    "student": {"hidden_size": 32, "num_layers": 12},
    "log_every": 10,
    "seed": 0,
    "distill": {"teacher_layers": (4, 8, 12)},
}


def test_flatten_and_diff_name_every_changed_leaf():
    new = {
        "student": {"hidden_size": 48, "num_layers": 12},
        "log_every": 5,
        "seed": 0,
        "distill": {"teacher_layers": [4, 8, 12]},
        "extra": 1,
    }
    assert resume.flatten(OLD)["student.hidden_size"] == 32
    assert resume.diff(OLD, new) == [
        ("extra", "<unset>", 1),
        ("log_every", 10, 5),
        ("student.hidden_size", 32, 48),
    ]


def test_refused_fields_raise_one_message_with_old_and_new():
    new = {**OLD, "student": {"hidden_size": 48, "num_layers": 9}, "log_every": 5}
    with pytest.raises(resume.ResumeMismatch) as err:
        resume.check(OLD, new, refuse=("student", "seed"), what="DIR", way_out="use a new workdir")
    msg = str(err.value)
    assert "student.hidden_size: 32 -> 48" in msg and "student.num_layers: 12 -> 9" in msg
    assert "log_every" not in msg and msg.endswith("use a new workdir")


def test_allowed_and_free_fields_pass_as_notes():
    new = {**OLD, "seed": 1, "log_every": 5}
    notes = resume.check(OLD, new, refuse=("seed",), allow=("seed",))
    assert notes == ["log_every: 10 -> 5", "seed: 0 -> 1"]
    # A prefix matches whole dotted components only: "seed" does not refuse "seed_offset".
    assert resume.check({"seed_offset": 0}, {"seed_offset": 1}, refuse=("seed",)) == [
        "seed_offset: 0 -> 1"
    ]
