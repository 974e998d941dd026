"""`kops train --git URL[@REV]`: train exactly a pushed commit, whatever state the caller's tree is in.

The commit is cloned into a temporary folder, trained there, and recorded as the run's provenance
(``mlflow.source.git.commit``). Credentials in the URL are used for the clone only: the clone's ``origin`` is
rewritten without them before anything reads it, and git's error output is scrubbed of them.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaggleops.adapters.git import run_git, strip_credentials
from kaggleops.config import CONFIG_FILE, KopsConfig, load_config
from kaggleops.errors import GitSourceError

CLONE_TIMEOUT_S = 600
@dataclass(frozen=True)
class GitSpec:
    """``URL[@REV]``: an ``@`` after the last ``/`` or ``:`` separates the revision (``git@host:a/b`` has none)."""

    url: str
    rev: str | None = None

    @classmethod
    def parse(cls, text: str) -> GitSpec:
        at = text.rfind("@")
        if at > max(text.rfind("/"), text.rfind(":")):
            return cls(text[:at], text[at + 1:] or None)
        return cls(text)

    def __str__(self) -> str:
        return strip_credentials(self.url) + (f"@{self.rev}" if self.rev else "")


def _git(args: list[str], cwd: Path | None, secret: str) -> str:
    try:
        out = run_git(args, cwd, CLONE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise GitSourceError(f"git {args[0]} timed out after {CLONE_TIMEOUT_S} s.") from None
    if out.returncode != 0:
        message = (out.stderr.strip().splitlines() or ["no output"])[-1].replace(secret, strip_credentials(secret))
        raise GitSourceError(f"git {args[0]} failed: {message}", "Check the URL/revision given to --git.")
    return out.stdout.strip()


def clone(spec: GitSpec, dst: Path) -> str:
    """Clone ``spec`` into ``dst`` at its revision (default: the remote HEAD); return the checked-out commit."""
    _git(["clone", "--quiet", "--no-checkout", spec.url, str(dst)], None, spec.url)
    _git(["remote", "set-url", "origin", strip_credentials(spec.url)], dst, spec.url)
    _git(["checkout", "--quiet", "--detach", spec.rev or "HEAD"], dst, spec.url)
    return _git(["rev-parse", "HEAD"], dst, spec.url)


def config_for_clone(caller: KopsConfig | None, clone_dir: Path, data_dir: Path | None = None) -> KopsConfig:
    """The clone's kops.yaml (its code and settings) with the caller's tracking store and data folder.

    Without a caller config (e.g. inside a fresh training kernel) the clone's own settings are used, with a
    relative SQLite store anchored at the current folder, not inside the temporary clone.
    """
    has_own = (clone_dir / CONFIG_FILE).is_file()
    if caller is None and not has_own:
        raise GitSourceError(f"The cloned commit has no {CONFIG_FILE} and there is none here.",
                             "Commit one (kops init) or run from a folder with a kops.yaml.")
    cfg = load_config(clone_dir / CONFIG_FILE) if has_own else caller.model_copy(update={"root": clone_dir})
    anchor = caller or cfg.model_copy(update={"root": Path.cwd()})
    update: dict[str, Any] = {"tracking_uri": anchor.resolved_tracking_uri,
                              "artifact_location": anchor.resolved_artifact_location}
    data = data_dir or (caller.resolved_data_dir() if caller else None)
    if data is not None:
        update["data_dir"] = str(data)
    return cfg.model_copy(update=update)


def train_from_git(caller: KopsConfig | None, spec: GitSpec, folds: list[int] | None = None,
                   progress: bool = True, data_dir: Path | None = None, resume: bool = False,
                   sample: bool = False) -> Any:
    """Train the commit ``spec`` names; runs land in the caller's tracking store with that commit as provenance.

    Example:
        >>> train_from_git(load_config(), GitSpec.parse("https://github.com/alice/tse@3f2a9c1"))  # doctest: +SKIP
    """
    from kaggleops.stages.train import train

    with tempfile.TemporaryDirectory(prefix="kops-git-") as tmp:
        clone_dir = Path(tmp) / "src"
        clone(spec, clone_dir)
        return train(config_for_clone(caller, clone_dir, data_dir), folds=folds, progress=progress, resume=resume,
                     sample=sample)


def try_load(config: str | None) -> KopsConfig | None:
    """The caller's kops.yaml when there is one (``--git`` also works from an empty folder)."""
    path = Path(config) if config else Path.cwd() / CONFIG_FILE
    return load_config(path) if path.is_file() else None

