"""The search space of `kops sweep` (kops.yaml ``sweep.params``), checked against the task's ``train:`` settings,
and the ways back: a trial's values as a config (:func:`with_params`) and into kops.yaml (:func:`apply_params`).

A parameter is ``name: [choice, ...]`` or ``name: {low, high, log?, step?}`` (an int range when low and high are
both ints). Every name must be one of the task's settings, and every end of a range and every choice must be a
value the task accepts; each mistake is one line naming ``sweep.params.<name>``.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import Any

from kaggleops.config import KopsConfig, TrainConfig
from kaggleops.errors import ConfigError

RANGE_KEYS = {"low", "high", "log", "step"}


@dataclass(frozen=True)
class Param:
    """One searched setting: ``choices``, or a range ``low``..``high`` (``integer``: ints; ``log``: log scale)."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False

    def values_to_check(self) -> list[Any]:
        """The values whose acceptance by the task proves the whole parameter fits: the choices, or both ends."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {list(self.choices)}"
        scale = ", log" if self.log else ""
        return f"{self.name} in [{self.low}, {self.high}{scale}]"


def _where(name: str) -> str:
    return f"kops.yaml `sweep.params.{name}`"


def parse_param(name: str, spec: Any) -> Param:
    """One ``sweep.params`` entry as a :class:`Param`; a malformed one is a ConfigError naming it."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{_where(name)}: no choices (an empty list).", "List the values to try, e.g. [32, 64].")
        return Param(name, choices=tuple(spec))
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - RANGE_KEYS:
        raise ConfigError(f"{_where(name)}: expected a list of choices or {{low, high, log?, step?}}, got {spec!r}.",
                          "E.g. lr: {low: 0.0001, high: 0.01, log: true}.")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"{_where(name)}: low and high must be numbers, got {low!r} and {high!r}.")
    if low >= high:
        raise ConfigError(f"{_where(name)}: empty range (low {low} >= high {high}).",
                          "Give low < high (a fixed value belongs in `train:`).")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{_where(name)}: a log range needs low > 0, got {low}.")
    integer = isinstance(low, int) and isinstance(high, int)
    return Param(name, low=low, high=high, log=log, step=spec.get("step"), integer=integer)


def parse_space(cfg: KopsConfig, task: Any) -> list[Param]:
    """``sweep.params`` parsed and checked against the task's settings: an unknown name, an empty range or a value
    the task refuses is a one-line ConfigError. No search space at all is one too."""
    from kaggleops.stages.train import settings_params, task_settings

    if not cfg.sweep.params:
        raise ConfigError("kops.yaml has no `sweep.params`: nothing to search.",
                          "Add e.g. `lr: {low: 0.0001, high: 0.01, log: true}` under `sweep: params:` (see kops init).")
    known = sorted(settings_params(task_settings(cfg, task)))
    space = []
    for name, spec in cfg.sweep.params.items():
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
            also = f" (did you mean `{close[0]}`?)" if close else ""
            raise ConfigError(f"{_where(name)}: `{name}` is not a `train:` setting of task {task.name}{also}; its "
                              f"settings: {', '.join(known)}.")
        param = parse_param(name, spec)
        for value in param.values_to_check():
            _check_value(cfg, task, name, value)
        space.append(param)
    return space


def _check_value(cfg: KopsConfig, task: Any, name: str, value: Any) -> None:
    from kaggleops.stages.train import task_settings

    try:
        task_settings(with_params(cfg, {name: value}), task)
    except ConfigError as e:
        raise ConfigError(f"{_where(name)}: the task refuses {name} = {value!r}: {e.message}") from None


def suggest(trial: Any, param: Param) -> Any:
    """The trial's value of ``param`` (an Optuna trial: the sampler's pick, or the value a retried trial carries)."""
    if param.choices is not None:
        return trial.suggest_categorical(param.name, list(param.choices))
    if param.integer:
        return trial.suggest_int(param.name, int(param.low), int(param.high), step=int(param.step or 1),
                                 log=param.log)
    return trial.suggest_float(param.name, float(param.low), float(param.high), step=param.step, log=param.log)


def with_params(cfg: KopsConfig, params: dict[str, Any]) -> KopsConfig:
    """A copy of ``cfg`` whose ``train:`` has ``params`` over its own values."""
    train = TrainConfig(**{**cfg.train.model_dump(), **params})
    return cfg.model_copy(update={"train": train})


def apply_params(text: str, params: dict[str, Any]) -> str:
    """kops.yaml ``text`` with ``params`` written into its ``train:`` section: a key's value replaced in place
    (its indentation and trailing comment kept), a missing key added at the end of the section; every other line,
    comments included, stays as it was."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"train:\s*(#.*)?$", line)), None)
    if start is None:
        lines += ["train:\n"] if not text or text.endswith("\n") else ["\ntrain:\n"]
        start = len(lines) - 1
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#"):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # blank lines after the section stay after it
    todo = dict(params)
    keys = [re.match(r"(\s+)[A-Za-z_]", line) for line in lines[start + 1:end] if line.strip()[:1] not in ("#", "")]
    indent = next((k.group(1) for k in keys if k), "  ")  # the section's own keys, not those of a nested mapping
    for i in range(start + 1, end):
        m = re.match(r"(\s+)([A-Za-z_][\w-]*):(\s*)([^#\n]*?)(\s*#.*)?(\n?)$", lines[i])
        if m and m.group(1) == indent and m.group(2) in todo:
            value = json.dumps(todo.pop(m.group(2)))
            lines[i] = f"{m.group(1)}{m.group(2)}:{m.group(3) or ' '}{value}{m.group(5) or ''}{m.group(6)}"
    added = [f"{indent}{k}: {json.dumps(v)}\n" for k, v in todo.items()]
    return "".join(lines[:end] + added + lines[end:])


def params_diff(before: str, after: str, path: str) -> str:
    """A unified diff of kops.yaml (empty when nothing changes)."""
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        f"{path} (before)", f"{path} (best trial)"))
