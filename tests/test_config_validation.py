"""Bad numbers and types in arguments and config files stop a command at once: a non-zero exit,
one line naming the field, no traceback, before any episode is read or any model trained."""

import json
import time

import pytest

from wmpo_core.cli import main as wmpo


def _config(tmp_path, data, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


CASES = {
    "train-policy --steps -5": (lambda t: ["train-policy", "--steps", "-5"], "field 'steps' must be > 0"),
    "train-policy --batch-size 0": (lambda t: ["train-policy", "--batch-size", "0"], "field 'batch_size' must be > 0"),
    "train-policy lr: [1]": (lambda t: ["train-policy", "--train-config", _config(t, {"lr": [1]})],
                             "field 'lr' must be float"),
    "train-policy val_fraction: 2": (lambda t: ["train-policy", "--train-config", _config(t, {"val_fraction": 2})],
                                     "field 'val_fraction' must be in [0, 1]"),
    "train-reward --steps -1": (lambda t: ["train-reward", "--steps", "-1"], "field 'steps' must be > 0"),
    "train-reward batch_size: '16'": (lambda t: ["train-reward", "--config", _config(t, {"batch_size": "16"})],
                                      "field 'batch_size' must be int"),
    "train-reward flip: 'yes'": (lambda t: ["train-reward", "--config", _config(t, {"flip": "yes"})],
                                 "field 'flip' must be bool"),
    "train-world-model steps: many": (lambda t: ["train-world-model", "--config",
                                                 _config(t, {"steps": "many", "lr": [1]})], "field 'steps' must be int"),
    "train-vae steps: many": (lambda t: ["train-vae", "--config", _config(t, {"steps": "many", "lr": [1]})],
                              "field 'steps' must be int"),
    "train-world-model lr: NaN": (lambda t: ["train-world-model", "--config", _config(t, {"lr": float("nan")})],
                                  "field 'lr' must be a finite number"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_value_exits_with_one_line_naming_the_field(case, tmp_path, capsys):
    args, expected = CASES[case]
    missing = tmp_path / "no_episodes_here"  # the check must come before episodes are even looked for
    t0 = time.perf_counter()
    code = wmpo([*args(tmp_path), "--episodes", str(missing), "--out", str(tmp_path / "out")])
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert code != 0, case
    assert expected in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and seconds < 10, (case, seconds)
