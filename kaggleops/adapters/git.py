"""Git provenance of the code a run was made from, read explicitly (MLflow's own detection follows
``sys.argv[0]``, so notebooks get none)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT_S = 20


@dataclass(frozen=True)
class GitInfo:
    commit: str
    branch: str | None
    repo_url: str
    dirty: bool
    diff: str


def run_git(args: list[str], cwd: Path | None, timeout_s: float = GIT_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``git ARGS`` in ``cwd`` with text output captured and a timeout (OSError/TimeoutExpired propagate)."""
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False)


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = run_git(list(args), cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def strip_credentials(url: str) -> str:
    """Remove ``user:token@`` from an https remote: ``https://x:tok@github.com/a/b`` → ``https://github.com/a/b``."""
    return re.sub(r"^(\w+://)[^/@]+@", r"\1", url)


def git_info(path: Path) -> GitInfo | None:
    """Commit, branch, credential-free remote URL, dirty flag and diff of the repo containing ``path``.

    Returns None outside a git repository (or in a repo with no commit yet).
    """
    top = _git(path, "rev-parse", "--show-toplevel")
    commit = _git(path, "rev-parse", "HEAD") if top else None
    if not top or not commit:
        return None
    branch = _git(path, "rev-parse", "--abbrev-ref", "HEAD")
    remote = _git(path, "config", "--get", "remote.origin.url")
    status = _git(path, "status", "--porcelain", "--untracked-files=no") or ""
    diff = _git(path, "diff", "HEAD") or "" if status else ""
    return GitInfo(
        commit=commit,
        branch=None if branch in (None, "HEAD") else branch,
        repo_url=strip_credentials(remote) if remote else Path(top).resolve().as_uri(),
        dirty=bool(status),
        diff=diff,
    )
