"""Run configuration: every setting of a training run, the paper's defaults, config files.

Resolution order (later wins): the paper's defaults for the model (and dataset), a config
file (TOML, YAML or JSON), then command-line flags. The resolved configuration is saved in the
run directory, so a run can always be traced back to its exact settings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import models

from .. import producers
from ..bptt import available_surrogates
from ..classifier import ImplicitClassifier
from ..network import BN_BACKWARDS
from ..spectral import SpectralNorm
from ..nonfinite import NONFINITE
from ..precision import PRECISIONS

def paper_defaults(model: str) -> dict[str, Any]:
    """The paper's run settings for a preset (from ``models``' preset table); {} for a spec string."""
    return models.get_preset(model).run_settings() if model in models.PRESETS else {}


@dataclasses.dataclass
class RunConfig:
    """All settings of a training run; ``None`` means "the preset's default"."""

    model: str = "f400"
    dataset: Optional[str] = None
    data_root: Optional[str] = None
    download: bool = False
    verify_data: bool = True  # the dataset's files must be the published ones (where their checksums are known)
    producer: Optional[str] = None
    time_steps: Optional[int] = None
    leak: Optional[float] = None
    sim_precision: str = "fp32"  # the simulation's products: fp32, bf16, or auto (resolved when a run starts)
    vth: float = 2.0
    method: str = "ide"  # "ide" (implicit differentiation) or "bptt"; runs made before it read as "ide"
    surrogate: str = "sigmoid"  # BPTT's surrogate spike derivative
    surrogate_slope: Optional[float] = None  # None: the surrogate's default (sigmoid 4, rectangular 1)
    f_solver: str = "broyden"
    f_max_iter: int = 50
    f_tol: float = 1e-5
    f_stop_mode: str = "rel"
    f_options: dict = dataclasses.field(default_factory=dict)
    b_solver: str = "broyden"
    b_max_iter: int = 30
    b_tol: float = 1e-6
    b_stop_mode: str = "rel"
    b_options: dict = dataclasses.field(default_factory=dict)
    operator_norm: bool = False
    bn_momentum: float = 0.1
    bn_backward: str = "batch"
    alpha_init: str = "bound"
    dropout: float = 0.2
    epochs: int = 100
    batch_size: int = 128
    test_batch_size: int = 200
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: list = dataclasses.field(default_factory=lambda: [30, 60, 90])
    gamma: float = 0.1
    warmup_iters: int = 0
    nonfinite: str = "stop"  # at a non-finite loss, gradient or parameter: stop the run, or skip the step
    max_skipped_steps: int = 10  # with nonfinite "skip": more skipped steps in one epoch stop the run
    val_size: Optional[int] = None  # 5000, or a tenth of a smaller training set
    seed: int = 0
    device: str = "auto"
    out: Optional[str] = None
    threads: Optional[int] = None

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


STR = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
BOOL = (lambda v: isinstance(v, bool), "true or false")
POS_INT = (lambda v: _is_int(v) and v >= 1, "an integer >= 1")
NONNEG_INT = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
POS_NUMBER = (lambda v: _is_number(v) and v > 0, "a number > 0")
NONNEG_NUMBER = (lambda v: _is_number(v) and v >= 0, "a number >= 0")

# A bound, not a warning: the paper and docs/analysis.md run T <= 1000, and a batch's simulation
# costs T steps (BPTT keeps all T in memory, and a spike dataset is binned into T frames per
# sample). Ten times the longest T used leaves room; a typo like 1e8, 10^5 times the paper's
# longest, would spend hours on its first batch before any output, so it is refused up front.
MAX_TIME_STEPS = 10_000

# What each setting may be: a check and the words that tell the user what is allowed. The
# command line checks its flags against the same table.
ALLOWED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": STR,
    "dataset": (_optional(STR[0]), "a dataset name"),
    "data_root": (_optional(STR[0]), "a folder path"),
    "download": BOOL,
    "verify_data": BOOL,
    "producer": (_optional(STR[0]), "a producer name"),
    "time_steps": (_optional(lambda v: POS_INT[0](v) and v <= MAX_TIME_STEPS),
                   f"an integer from 1 to {MAX_TIME_STEPS:,}"),
    "leak": (_optional(lambda v: _is_number(v) and 0 < v < 1), "a number in (0, 1) (no leak: producer 'if')"),
    "sim_precision": (lambda v: v in PRECISIONS, " or ".join(map(repr, PRECISIONS))),
    "vth": POS_NUMBER,
    "method": (lambda v: v in ImplicitClassifier.METHODS, " or ".join(map(repr, ImplicitClassifier.METHODS))),
    "surrogate": (lambda v: v in available_surrogates(), " or ".join(map(repr, available_surrogates()))),
    "surrogate_slope": (_optional(POS_NUMBER[0]), POS_NUMBER[1]),
    "f_solver": STR, "f_max_iter": POS_INT, "f_tol": POS_NUMBER,
    "f_stop_mode": (lambda v: v in ("rel", "abs"), "'rel' or 'abs'"),
    "f_options": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "a table of option = value"),
    # >= 1: the Jacobian-free gradient is b_solver phantom with b_options steps=0, never a zero budget.
    "b_solver": STR, "b_max_iter": POS_INT, "b_tol": POS_NUMBER,
    "b_stop_mode": (lambda v: v in ("rel", "abs"), "'rel' or 'abs'"),
    "b_options": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "a table of option = value"),
    "operator_norm": BOOL,
    "bn_momentum": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "bn_backward": (lambda v: v in BN_BACKWARDS, " or ".join(map(repr, BN_BACKWARDS))),
    "alpha_init": (lambda v: v in SpectralNorm.ALPHA_INITS, " or ".join(map(repr, SpectralNorm.ALPHA_INITS))),
    "dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "epochs": POS_INT, "batch_size": POS_INT, "test_batch_size": POS_INT,
    # Bounded so that a typo (1e300) is refused here rather than overflowing in the first steps.
    "lr": (lambda v: _is_number(v) and 0 < v <= 10, "a number in (0, 10]"),
    "momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "gamma": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1] (the factor lr is multiplied by)"),
    "nonfinite": (lambda v: v in NONFINITE, " or ".join(map(repr, NONFINITE))),
    "max_skipped_steps": NONNEG_INT,
    "milestones": (lambda v: isinstance(v, (list, tuple)) and all(_is_int(m) and m >= 0 for m in v)
                   and list(v) == sorted(set(v)), "a list of distinct integers >= 0 (epochs) in increasing order"),
    "warmup_iters": NONNEG_INT, "val_size": (_optional(NONNEG_INT[0]), NONNEG_INT[1]),
    "seed": (_is_int, "an integer"),
    "device": STR,
    "out": (_optional(STR[0]), "a folder path"),
    "threads": (_optional(lambda v: POS_INT[0](v) and v <= (os.cpu_count() or 1)),
                f"an integer from 1 to this machine's {os.cpu_count() or 1} cores"),
}


def check_values(config: RunConfig) -> None:
    """Reject a setting of the wrong type or out of range, naming it and what is allowed."""
    for name, (ok, allowed) in ALLOWED.items():
        value = getattr(config, name)
        if not ok(value):
            raise ValueError(f"setting `{name}` must be {allowed}, got {value!r}")


# Run settings that are options of the producer; each applies only to producers that take it.
PRODUCER_SETTINGS = ("time_steps", "leak", "sim_precision", "f_solver", "f_max_iter", "f_tol", "f_stop_mode",
                     "f_options")


def check_producer_settings(producer: Optional[str], given: set[str]) -> None:
    """A given setting that the producer does not take would be silently ignored: refuse it."""
    name = producer or "lif"
    takes = producers.producer_options(name)
    unused = [setting for setting in PRODUCER_SETTINGS if setting in given and setting not in takes]
    if unused:
        own = [f"`{s}`" for s in PRODUCER_SETTINGS if s in takes]
        raise ValueError(f"{', '.join(f'`{s}`' for s in unused)} {'does' if len(unused) == 1 else 'do'} not apply to "
                         f"the {name} producer" + (f", which takes {', '.join(own)}" if own else ""))


def settle_producer_settings(config: "RunConfig") -> None:
    """The simulation settings (T, leak) as they will run: the producer's own default where unset,
    and unset where the producer has no use for them, so that the saved configuration and the log
    show the T that ran and never one that played no part."""
    defaults = producers.producer_defaults(config.producer or "lif")
    for setting in ("time_steps", "leak"):
        if setting not in defaults:
            setattr(config, setting, None)
        elif getattr(config, setting) is None:
            setattr(config, setting, defaults[setting])


# The settings of IDE's backward (adjoint) solve, and those of BPTT alone.
BACKWARD_SETTINGS = ("b_solver", "b_max_iter", "b_tol", "b_stop_mode", "b_options", "bn_backward")
BPTT_SETTINGS = ("surrogate", "surrogate_slope")


def _flag_name(setting: str) -> str:
    return "--" + setting.replace("_", "-") if setting in BPTT_SETTINGS else "--" + setting


def check_method_applies(method: str, producer: Optional[str], given: set[str]) -> None:
    """Settings that the chosen training method would silently not use are refused, as is BPTT
    without a spiking simulation to unroll."""
    if method == "bptt":
        if (producer or "lif") not in ("if", "lif"):
            raise ValueError(f"--method bptt unrolls the spiking simulation: use --producer if or lif, not {producer}")
        unused = [name for name in BACKWARD_SETTINGS if name in given]
        if unused:
            flags = ", ".join(map(_flag_name, unused))
            raise ValueError(f"{flags}: settings of the implicit backward apply to --method ide only; --method bptt "
                             "has no backward solve")
    else:
        unused = [name for name in BPTT_SETTINGS if name in given]
        if unused:
            raise ValueError(f"{', '.join(map(_flag_name, unused))} applies to --method bptt only (this run trains "
                             f"with --method {method})")


def translate_legacy(values: dict[str, Any], source: str = "settings") -> dict[str, Any]:
    """Saved settings in the names of older versions, translated to today's (a new dict), so that
    the config.json files and checkpoints of earlier runs still load; applied wherever saved
    settings are read (settings files, run folders' config.json, checkpoints, ``--resume``).

    The key ``backward`` is ``b_solver``; the backward solver ``spiking`` is ``spide``, whose
    option ``time_steps`` is gone: it is folded into ``b_max_iter`` (SPIDE runs exactly
    ``b_max_iter`` steps), taken as ``b_max_iter`` where that is not set, and a ``ValueError``
    (one line, naming ``source``) where the two disagree. Anything else is returned unchanged.
    """
    out = dict(values)
    if "backward" in out:
        old = out.pop("backward")
        if out.get("b_solver", old) != old:
            raise ValueError(f"{source}: `backward` ({old!r}, the old name of `b_solver`) and `b_solver` "
                             f"({out['b_solver']!r}) disagree; keep one")
        out["b_solver"] = old
    if out.get("b_solver") == "spiking":
        out["b_solver"] = "spide"
        options = out.get("b_options")
        if isinstance(options, dict) and "time_steps" in options:
            options = dict(options)
            steps = options.pop("time_steps")
            if steps is not None:
                budget = out.setdefault("b_max_iter", steps)
                if budget != steps:
                    raise ValueError(f"{source}: the spiking backward's option time_steps={steps!r} and b_max_iter="
                                     f"{budget!r} disagree; spide runs exactly b_max_iter steps: set b_max_iter to the "
                                     "steps meant and drop time_steps")
            out["b_options"] = options
    return out


def check_keys(values: dict[str, Any], source: str) -> None:
    """Reject unknown setting names with the list of known ones."""
    unknown = sorted(set(values) - set(RunConfig.field_names()))
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {unknown}; known settings: {', '.join(RunConfig.field_names())}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML, YAML or JSON file (dashes in keys are read as underscores)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config file {str(path)!r} is a folder; give a settings file (.toml, .yaml/.yml or .json)")
    if not path.exists():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} is not a regular file; give a settings file (.toml, .yaml/.yml "
                         "or .json)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"config file {path.name} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib as parser
        except ModuleNotFoundError:  # Python 3.10
            import tomli as parser  # type: ignore[no-redef]

        fmt, errors = "TOML", (parser.TOMLDecodeError,)
        parse = parser.loads
    elif suffix in (".yaml", ".yml"):
        import yaml

        fmt, errors = "YAML", (yaml.YAMLError,)

        def parse(text: str) -> Any:
            return yaml.load(text, Loader=_yaml_loader(yaml)) or {}
    elif suffix == ".json":
        fmt, errors, parse = "JSON", (json.JSONDecodeError,), json.loads
    else:
        raise ValueError(f"config file {path.name}: unknown format {suffix!r}; use .toml, .yaml/.yml or .json")
    try:
        data = parse(text)
    except errors as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"config file {path.name} is not valid {fmt}: {first_line}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path.name} must hold a table of settings, got {type(data).__name__}")
    normalized: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in normalized:
            raise ValueError(f"config file {path.name} sets `{name}` twice (as {spelled[name]!r} and {key!r}); keep one")
        normalized[name], spelled[name] = value, str(key)
    data = translate_legacy(normalized, f"config file {path.name}")
    check_keys(data, f"config file {path.name}")
    return data


def _yaml_loader(yaml: Any) -> Any:
    """PyYAML's safe loader reading floats as YAML 1.2 does: ``1e-3`` is a number, not the string '1e-3'."""
    import re

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return Loader


def resolve(file_values: dict[str, Any], cli_values: dict[str, Any]) -> RunConfig:
    """Defaults < the model's paper defaults < file < command line; ``None`` values are "unset"."""
    chosen = {**{k: v for k, v in file_values.items() if v is not None},
              **{k: v for k, v in cli_values.items() if v is not None}}
    check_keys(chosen, "settings")
    model = chosen.get("model", RunConfig.model)
    paper = paper_defaults(model)
    merged = {**paper, **chosen}
    if "b_options" in chosen and "b_solver" not in chosen and "b_options" in paper:
        merged["b_options"] = chosen["b_options"]
    if "b_solver" in chosen and "b_options" not in chosen and chosen["b_solver"] != paper.get("b_solver"):
        merged["b_options"] = {}  # the preset's solver options belong to the preset's solver
    config = RunConfig(**merged)
    if config.dataset is None:
        config.dataset = "fashion-mnist"
    check_values(config)
    # A setting at its default value asks for nothing (a run's own config.json lists every
    # setting); one set to anything else must apply to the method and producer.
    defaults = RunConfig()
    asked = {k for k, v in chosen.items() if v != getattr(defaults, k)}
    check_method_applies(config.method, config.producer, asked)
    check_producer_settings(config.producer, asked)
    settle_producer_settings(config)
    config.milestones = list(config.milestones)
    return config
