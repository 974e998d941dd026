"""Helpers for the training notebooks (``kernels/train_colab.ipynb``, ``kernels/train_kaggle.ipynb``).

A notebook runs kops as ``!kops ...`` shell commands, i.e. child processes. Colab's ``userdata`` answers only
inside the notebook's own process, so :func:`use_secrets` reads the secret store there (through kops' one
credential chain) and exports what it finds into the environment the commands inherit. Only names are returned
or printed, never values.

Example:
    >>> from kaggleops.notebook import use_secrets
    >>> use_secrets("MLFLOW_TRACKING_URI")  # on Colab with both secrets set  # doctest: +SKIP
    ['KAGGLE_USERNAME', 'KAGGLE_KEY', 'MLFLOW_TRACKING_URI']
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

TRACKING_URI = "MLFLOW_TRACKING_URI"


def use_secrets(tracking_uri_secret: str = TRACKING_URI) -> list[str]:
    """Export Kaggle and MLflow credentials kept in the notebook's secret store; returns the names set.

    ``tracking_uri_secret`` names the secret that holds the tracking URI when it is not called
    ``MLFLOW_TRACKING_URI``. Values already in the environment win (argument > env var > file > secret store).
    """
    from kaggleops.adapters.credentials import (
        apply_kaggle_credentials,
        apply_tracking_credentials,
        clear_cache,
        notebook_secret,
    )

    clear_cache()  # a secret attached since the last call is seen
    names = apply_kaggle_credentials() + apply_tracking_credentials()
    if tracking_uri_secret != TRACKING_URI and not os.environ.get(TRACKING_URI):
        found = notebook_secret(tracking_uri_secret)
        if found is not None:
            os.environ[TRACKING_URI] = found.value
            names.append(f"{TRACKING_URI} (from {tracking_uri_secret})")
    return names


def last_training_run(project_dir: str | Path = ".") -> str:
    """The newest finished training run of the project: a k-fold parent, else a single fold run.

    This is the run ``kops train`` printed last; ``kops push-kernel --run`` takes it.
    """
    from kaggleops.adapters.tracking import open_tracker
    from kaggleops.config import load_config
    from kaggleops.errors import ConfigError
    from kaggleops.schema import TAG_KIND, TAG_PARENT, Kind

    folder = Path(project_dir)
    tracker = open_tracker(load_config(folder / "kops.yaml"))
    for run in tracker.search("attributes.status = 'FINISHED'"):  # newest first
        kind = run.tags.get(TAG_KIND)
        if kind == Kind.KFOLD or (kind == Kind.FOLD and TAG_PARENT not in run.tags):
            return str(run.id)
    raise ConfigError(f"No finished training run in the tracking store of {folder / 'kops.yaml'}.",
                      f"Train first: cd {folder} && kops train --resume")


def finished_training(project_dir: str | Path = ".") -> list[str]:
    """The FINISHED fold runs (one id per configured fold) of the project's checked-out commit, when every fold
    has one; [] otherwise, and for a tree with uncommitted changes. kops.yaml is part of the commit, so the same
    commit means the same settings: a notebook run again after its training finished reports these runs instead
    of training the commit again.

    Example:
        >>> finished_training("/content/project")  # doctest: +SKIP
        ['3f2a9c1e…']
    """
    from kaggleops.adapters.git import git_info
    from kaggleops.adapters.tracking import open_tracker
    from kaggleops.config import load_config
    from kaggleops.schema import TAG_DIRTY, TAG_FOLD, TAG_GIT_COMMIT, TAG_KIND, Kind

    folder = Path(project_dir)
    cfg = load_config(folder / "kops.yaml")
    info = git_info(folder)
    if info is None or info.dirty:
        return []
    found: dict[str, str] = {}
    with warnings.catch_warnings():  # tqdm's "IProgress not found" when mlflow loads in a notebook without widgets
        warnings.filterwarnings("ignore", message="IProgress not found")
        tracker = open_tracker(cfg)
    runs = tracker.search(f"attributes.status = 'FINISHED' and tags.`{TAG_GIT_COMMIT}` = '{info.commit}' "
                                    f"and tags.`{TAG_KIND}` = '{Kind.FOLD}'")
    for run in runs:  # newest first
        tags = run.tags
        if tags.get(TAG_DIRTY) != "true" and TAG_FOLD in tags:
            found.setdefault(tags[TAG_FOLD], str(run.id))
    folds = [str(f) for f in (cfg.train.folds if cfg.train.folds is not None else range(cfg.train.n_folds))]
    return [found[f] for f in folds] if all(f in found for f in folds) else []
