"""Accelerators and quota: the machine shape a kernel asks for, checked before pushing, and `kops quota`.

Shapes are named as Kaggle names them (``NvidiaTeslaT4`` = "GPU T4 x2", ``NvidiaL4``, ``TpuV5E8``) and checked
against what the installed client knows (:mod:`kaggleops.adapters.kaggle_machines`): an unknown shape is
refused; a retired one (``NvidiaTeslaP100``, ``TpuV38``…, which Kaggle silently runs on a substitute) is
refused naming the substitute, or pushed with a warning when ``allow_retired``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kaggleops.adapters.kaggle_machines import Accelerator, check_accelerator, check_docker_pinning
from kaggleops.config import KopsConfig


def resolve_accelerator(cfg: KopsConfig, shape: str | None, allow_retired: bool = False,
                        warn: Callable[[str], None] | None = None) -> Accelerator:
    """The accelerator to push with: ``shape`` else ``kernel.machine_shape``, validated (see module docstring)."""
    found, warning = check_accelerator(shape or cfg.kernel.machine_shape, allow_retired)
    if warning and warn:
        warn(f"kops: warning: {warning}")
    return found


def docker_pinning(value: str | None) -> str | None:
    """``original`` | ``latest`` | None, validated."""
    return check_docker_pinning(value)


def quota(cfg: KopsConfig, kaggle: Any = None) -> dict[str, Any]:
    """The weekly GPU/TPU hours used, reserved and allowed, and when they refresh (``KaggleApi.quota_view``).

    Example:
        >>> quota(load_config())  # doctest: +SKIP
        {'refresh_time': '2026-12-05T00:00:00Z', 'gpu': {'used_h': 3.5, 'reserved_h': 0.0, 'allowed_h': 30.0, ...}}
    """
    from kaggleops.adapters.kaggle import Kaggle

    return (kaggle or Kaggle.from_config(cfg)).quota()


def render_quota(q: dict[str, Any]) -> str:
    """One line per accelerator kind, then the refresh time."""
    lines = []
    for kind in ("gpu", "tpu"):
        if kind in q:
            h = q[kind]
            lines.append(f"{kind.upper()}: {h['used_h']:.2f} h used, {h['reserved_h']:.2f} h reserved, "
                         f"{h['allowed_h']:.2f} h allowed ({h['remaining_h']:.2f} h left this week)")
    if not lines:
        lines.append("No accelerator quota reported.")
    lines.append(f"refreshes: {q.get('refresh_time') or 'unknown'}")
    return "\n".join(lines)
