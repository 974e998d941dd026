"""The one door to Optuna (`kops sweep`): its RDB storage with heartbeats, samplers, pruners, studies.

Every Optuna/SQLAlchemy error of opening a storage becomes :class:`~kaggleops.errors.SweepStorageError`, one line
with the URL's password masked. Optuna is imported inside the functions (``kops --help`` stays fast).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kaggleops.adapters.credentials import lookup
from kaggleops.config import KopsConfig
from kaggleops.errors import URL_PASSWORD, ConfigError, SweepStorageError, mask_url

ENV_SWEEP_STORAGE = "KOPS_SWEEP_STORAGE"
ATTR_RUN = "mlflow_run_id"  # trial user attribute: the trial's MLflow run (inherited by a retried trial)
ATTR_WORKER = "worker"  # trial user attribute: host:pid of the worker that ran it
ATTR_TARGET = "n_trials"  # study user attribute: the number of finished trials the study is after
DEFAULT_STORAGE_FILE = Path(".kops") / "sweep.db"
CONNECT_TIMEOUT_S = 10
CREATE_TRIES = 3
FROM_TRACKING = "tracking"  # sweep.storage: tracking = the tracking store's database server (see storage_url)
OPTUNA_DATABASE = "optuna"
_ENV_REF = re.compile(r"\$\{(\w+)\}")


def storage_url(cfg: KopsConfig) -> str:
    """The study storage, through the same chain as the tracking URI: env ``KOPS_SWEEP_STORAGE`` > ``sweep.storage``
    > a notebook secret ``KOPS_SWEEP_STORAGE`` > ``sqlite:///<project>/.kops/sweep.db``. Each ``${VAR}`` in it is
    replaced by env var (or notebook secret) VAR, a missing one a ConfigError naming it; a relative SQLite path is
    anchored at the folder of kops.yaml. ``tracking``: derived from a database tracking URI (same server, database
    ``optuna``, which must exist; SQLite: ``.kops/sweep.db`` beside the store).

    Example:
        >>> _beside_tracking("postgresql://kops:pw@db:5432/mlflow")
        'postgresql://kops:pw@db:5432/optuna'
    """
    found = lookup(ENV_SWEEP_STORAGE, file_value=cfg.sweep.storage)
    if found is None:
        path = cfg.root / DEFAULT_STORAGE_FILE
        return f"sqlite:///{path}"
    if found.value == FROM_TRACKING:
        return _beside_tracking(cfg.resolved_tracking_uri)
    values = {name: lookup(name) for name in _ENV_REF.findall(found.value)}
    missing = [name for name, secret in values.items() if secret is None]
    if missing:
        raise ConfigError(f"sweep.storage names ${{{missing[0]}}}, but that environment variable is not set.",
                          f"Set {missing[0]} (or {ENV_SWEEP_STORAGE} to the whole URL).")
    url = _ENV_REF.sub(lambda m: values[m.group(1)].value, found.value)  # type: ignore[union-attr]
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        url = prefix + str((cfg.root / url[len(prefix):]).resolve())
    return url


def _beside_tracking(tracking: str) -> str:
    """``sweep.storage: tracking``: the database server of a database tracking URI, database ``optuna`` (not
    MLflow's own: both keep an ``alembic_version`` table); ``.kops/sweep.db`` beside a SQLite store."""
    if tracking.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking[len('sqlite:///'):]).parent / DEFAULT_STORAGE_FILE}"
    match = re.match(r"((?:postgresql|mysql)[\w+]*://[^/]+)/[^?]*(\?.*)?$", tracking)
    if match is None:
        raise ConfigError(f"sweep.storage is `{FROM_TRACKING}`, but the tracking URI {mask_url(tracking)} is not a "
                          "database kops can reach (a tracking server keeps its database to itself).",
                          "Give sweep.storage the database URL, e.g. postgresql://user:${PGPASSWORD}@host/optuna.")
    return f"{match.group(1)}/{OPTUNA_DATABASE}{match.group(2) or ''}"


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}  # many workers of one machine share the file
    if url.startswith("postgres"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def open_storage(url: str, heartbeat_s: float, grace_s: float | None,
                 on_stale: Callable[[Any, Any], None] | None) -> Any:
    """An Optuna ``RDBStorage`` on ``url`` with trial heartbeats; ``on_stale(study, trial)`` hears each trial
    whose worker stopped beating for ``grace_s``. An unreachable or malformed storage is a SweepStorageError."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # kops prints its own line per trial
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(CREATE_TRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: "experimental"
                return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url),
                                                  heartbeat_interval=max(1, round(heartbeat_s)),
                                                  grace_period=None if grace_s is None else max(1, round(grace_s)),
                                                  heartbeat_stale_trial_callback=on_stale)
        except Exception as e:  # noqa: BLE001 - SQLAlchemy/driver errors of every kind: one line, the URL masked
            # workers opening a new database at once race creating its tables: the loser tries again
            if type(e).__name__ in ("IntegrityError", "ProgrammingError") and attempt + 1 < CREATE_TRIES:
                time.sleep(1.0 + attempt)
                continue
            raise SweepStorageError(f"Cannot open the sweep storage {mask_url(url)}: {_reason(e, url)}.",
                                    f"Check sweep.storage in kops.yaml (or {ENV_SWEEP_STORAGE}) and that its "
                                    "database server is up.") from None
    raise AssertionError("unreachable")


def _reason(error: BaseException, url: str) -> str:
    text = str(getattr(error, "orig", None) or error)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    secret = URL_PASSWORD.search(url)
    if secret and secret["secret"]:
        first = first.replace(secret["secret"], "***")
    return mask_url(first)[:300]


def retry_callback(max_retry: int) -> Any:
    """Optuna's stale-trial callback that puts a dead worker's trial back as WAITING with the same params and user
    attributes (``RetryFailedTrialCallback``), at most ``max_retry`` times per original trial."""
    import warnings

    from optuna.storages import RetryFailedTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental"
        return RetryFailedTrialCallback(max_retry=max_retry, inherit_intermediate_values=False)


def sampler(name: str, startup_trials: int) -> Any:
    """``tpe`` (constant liar: parallel workers do not all try the same region) or ``random``."""
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler()
    return optuna.samplers.TPESampler(n_startup_trials=startup_trials, constant_liar=True)


def pruner(name: str, startup_trials: int, max_resource: int) -> Any:
    """``median`` (after ``startup_trials`` finished), ``hyperband`` over the folds, or ``none``."""
    import optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_resource))
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)


def load_study(name: str, storage: Any, maximize: bool, sampler_: Any = None, pruner_: Any = None) -> Any:
    """The study ``name`` in ``storage``, created when absent (several workers at once: one creates, the others
    load it). An existing study optimising the other way is a ConfigError."""
    import optuna

    direction = "maximize" if maximize else "minimize"
    study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True,
                                sampler=sampler_, pruner=pruner_)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"Study {name} was created to {study.direction.name.lower()}, but the task's metric is "
                          f"to {direction}.", "Name another study: kops sweep --study NEW-NAME.")
    return study


def study_names(storage: Any) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def stale_trials(study: Any) -> None:
    """Mark the trials whose worker stopped beating as FAIL (their callback re-queues them)."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def frozen(study: Any, number: int) -> Any:
    """The stored (frozen) trial ``number`` of ``study``."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def retried_from(trial: Any) -> int | None:
    """The number of the trial a retried (frozen) trial was put back for; None for a first attempt."""
    import warnings

    from optuna.storages import RetryFailedTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental"
        return RetryFailedTrialCallback.retried_trial_number(trial)


def retry_history(trial: Any) -> list[int]:
    """The numbers of the earlier attempts of a put-back (frozen) trial, oldest first; empty for a first attempt."""
    import warnings

    from optuna.storages import RetryFailedTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental"
        return list(RetryFailedTrialCallback.retry_history(trial))


def retries(trial: Any) -> int:
    """How many times the (frozen) trial's lineage was put back before it."""
    return len(retry_history(trial))
