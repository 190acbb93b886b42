"""Fuzzed command lines and settings files: `implicit-snn train` either completes a run or ends
with a one-line error (exit status 2 for usage errors, 1 for a requested stop), never a traceback.

Every example trains at most one epoch of a tiny network on the synthetic dataset: the fuzzed
flags come first and a fixed tail that keeps a run small comes last (argparse keeps the last
value), so the fuzz explores settings, not run lengths.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from implicit_snn.app.cli import main

BAD = ["x", "", "-1", "0", "nan", "inf", "1e309", "1.5", "-0.5", "True", "[1]"]
FLAGS: dict[str, list[str]] = {
    "--producer": ["if", "lif", "analytic", "lfi"],
    "--time-steps": ["1", "2", "3"],
    "--leak": ["0.9", "0.5"],
    "--vth": ["1.0", "2.0", "1e30"],
    "--dropout": ["0.0", "0.2", "0.99"],
    "--b_solver": ["broyden", "anderson", "fixed_point", "phantom", "spide", "gmres", "broydn"],
    "--b_max_iter": ["0", "1", "5", "30"],
    "--b_tol": ["1e-3", "1e-6"],
    "--b_stop_mode": ["rel", "abs", "max"],
    "--b_options": ["memory=3", "damping=0.5", "throw=True", "check_every=2", "steps=2", "steps=0", "bogus=1",
                    "max_iter=2", "memory", "=3", "memory=3 damping=0.5", "steps=0 throw=True"],
    "--f_solver": ["broyden", "anderson"],
    "--f_max_iter": ["5", "50"],
    "--f_tol": ["1e-3"],
    "--f_options": ["memory=3", "bogus=1", "memory=3 throw=True"],
    "--method": ["ide", "bptt", "ift"],
    "--surrogate": ["sigmoid", "rectangular"],
    "--bn-momentum": ["0.1", "0.19"],
    "--bn-backward": ["batch", "simulated"],
    "--alpha-init": ["bound", "norm"],
    "--lr": ["0.05", "0.5"],
    "--momentum": ["0.0", "0.9"],
    "--weight-decay": ["0", "5e-4"],
    "--milestones": ["0", "1", "0 0"],
    "--gamma": ["0.1", "0.5"],
    "--warmup-iters": ["0", "3"],
    "--seed": ["0", "7"],
    "--operator-norm": [],
}
# Last on the command line, so that whatever came before, a run stays one tiny epoch.
TAIL = ["--dataset", "synthetic", "--model", "6 (F6)", "--epochs", "1", "--val-size", "32", "--batch-size", "32",
        "--threads", "1", "--device", "cpu"]


@st.composite
def command_lines(draw) -> list[str]:
    argv = []
    for flag in draw(st.lists(st.sampled_from(sorted(FLAGS)), max_size=5)):
        values = FLAGS[flag]
        if not values:
            argv.append(flag)
            continue
        bad = draw(st.integers(0, 5)) == 0  # mostly valid values, so that runs complete too
        value = draw(st.sampled_from(BAD) if bad else st.sampled_from(values))
        argv += [flag, *value.split(" ")]
    return argv


def _outcome(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, the last line printed to stderr) of one command, or a failed test on a traceback."""
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
        text = stop.code if isinstance(stop.code, str) else capsys.readouterr().err.strip()
        return status, text.splitlines()[-1] if text else ""
    capsys.readouterr()
    return status, ""


def _check(status: int, line: str, argv: list[str]) -> None:
    event(f"exit status {status}")
    if status == 0:
        return
    assert status in (1, 2), (status, argv)
    # argparse's own errors end with "prog: error: …"; ours start with "error: ".
    assert line.startswith("error: ") or ": error: " in line, (line, argv)
    if status == 1:
        assert "throw=True was set" in line, (line, argv)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines())
def test_fuzzed_command_lines_run_or_fail_in_one_line(argv, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    full = ["train", *argv, *TAIL, "--out", str(out)]
    status, line = _outcome(full, capsys)
    _check(status, line, full)
    if status == 0:
        assert json.loads((out / "summary.json").read_text())["epochs"] == 1


SETTINGS = {
    "lr": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4), st.integers(-3, 3)),
    "time_steps": st.one_of(st.integers(-2, 4), st.floats(), st.text(max_size=3), st.booleans()),
    "milestones": st.one_of(st.lists(st.integers(-1, 3), max_size=3), st.integers(), st.text(max_size=3)),
    "producer": st.sampled_from(["if", "lif", "analytic", "x", ""]),
    "b_options": st.one_of(st.dictionaries(st.sampled_from(["memory", "damping", "bogus"]), st.integers(0, 4),
                                           max_size=2), st.integers()),
    "dropout": st.one_of(st.floats(-1, 2), st.text(max_size=2)),
    "unknown_key": st.integers(),
    "time-steps": st.integers(1, 3),
}


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(value, "nan" if value != value else repr(value))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.fixed_dictionaries({}, optional=SETTINGS), fmt=st.sampled_from(["toml", "yaml", "json", "txt"]),
       garbage=st.booleans())
def test_fuzzed_settings_files_run_or_fail_in_one_line(values, fmt, garbage, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("fuzzcfg")
    if fmt == "toml":
        text = "".join(f"{key} = {_toml_value(v)}\n" for key, v in values.items())
    elif fmt == "json":
        text = json.dumps(values)
    else:
        import yaml
        text = yaml.safe_dump(values)
    if garbage:
        text += "\n[[[: {\n"
    path = folder / f"run.{fmt}"
    path.write_text(text)
    full = ["train", "--config", str(path), *TAIL, "--out", str(folder / "run")]
    status, line = _outcome(full, capsys)
    _check(status, line, full)
