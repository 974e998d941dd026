"""The task's own code as a wheel in a content-versioned ``<owner>/<experiment>-code`` dataset, for offline kernels.

What travels (decided once, the same for train and kernel):

- ``task: path/file.py:Class`` — the file's folder: every ``*.py`` module in it and every sub-folder that is a
  package (has ``__init__.py``), installed as top-level modules. kops puts that folder first on ``sys.path``
  when it loads the task, so the file and its siblings import each other the same way here and in the kernel;
  the task is imported there as ``<file stem>:Class``.
- ``task: package.module:Class`` — the top-level package (or single module) that holds ``module``, wherever it
  is importable from (the project, an editable install, site-packages). Built-in tasks (``kaggleops.…``)
  travel in the kops runtime and need no code dataset.
- ``kernel.wheels: FOLDER`` (kops.yaml, relative to it) — every ``*.whl`` in it travels with the code (flat in
  the dataset) and is installed beside it, for packages the Kaggle image lacks (include their own missing
  dependencies: ``--no-deps``).

The wheel is built offline and byte-reproducibly like the kops runtime (:mod:`kaggleops.kernel.wheel`); the
dataset holds ``kops-code-<hash16>.json`` naming the wheel and the dependency wheels. When the latest version
already holds that marker it is reused and no new version is made. Inside the kernel everything is installed
with ``pip install --no-index --no-deps --target <tmp>``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kaggleops.adapters.kaggle import Kaggle
from kaggleops.config import KopsConfig
from kaggleops.errors import ConfigError, KopsError
from kaggleops.files import write_zip
from kaggleops.kernel.wheel import HASH_CHARS, _record_hash, tree_files, upload_private_dataset
from kaggleops.refs import DatasetRef, slugify
from kaggleops.schema import CODE_MARKER_PREFIX

DIST_NAME = "kops_task_code"
WHEELS_DIR = "wheels"


@dataclass(frozen=True)
class CodeDataset:
    """The dataset version holding the task's code: ``module`` is the spec the kernel imports."""

    dataset: str
    version: int
    content_sha256: str
    wheel: str
    wheels: list[str]
    module: str
    created: bool
    versions: list[dict[str, object]] = field(default_factory=list)  # a mixed blend: every version's marker

    def as_plan(self) -> dict[str, object]:
        plan = {"dataset": self.dataset, "version": self.version, "content_sha256": self.content_sha256,
                "wheel": self.wheel, "wheels": self.wheels}
        return {**plan, "versions": self.versions} if self.versions else plan

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def task_kernel_spec(cfg: KopsConfig, code: CodeDataset | None = None) -> str:
    """The ``module:Class`` the kernel imports: the code dataset's, kops.yaml's ``task:``, or the registry's."""
    from kaggleops.tasks import task_spec

    if code is not None:
        return code.module
    spec = cfg.task or task_spec(cfg.competition)
    if not spec:
        raise ConfigError(f"No task for competition {cfg.competition}.", "Set `task:` in kops.yaml.")
    return spec


def kernel_spec(spec: str) -> str:
    """The ``module:Class`` the kernel imports for a kops.yaml task spec (a file spec → its stem)."""
    target, _, cls = spec.rpartition(":")
    return f"{Path(target).stem}:{cls}" if target.endswith(".py") else spec


def code_files(spec: str, root: Path) -> list[tuple[str, Path]]:
    """(name in the wheel, path) of the task's code (see the module docstring); empty for a built-in task."""
    target = spec.rpartition(":")[0]
    if target.endswith(".py"):
        folder = (root / target).resolve().parent
        files = [(p.name, p) for p in sorted(folder.glob("*.py"))]
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").is_file()):
            files += tree_files(sub, f"{sub.name}/")
        return files
    top = target.split(".")[0]
    if top == "kaggleops":
        return []
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    found = importlib.util.find_spec(top)
    if found is None or not found.origin:
        raise ConfigError(f"Cannot find the task's package {top!r} to ship with the kernel.",
                          "Install it (pip install -e .) or run kops from the folder that holds it.")
    origin = Path(found.origin)
    if found.submodule_search_locations:
        return tree_files(origin.parent, f"{top}/")
    return [(origin.name, origin)]


def task_code_version(cfg: KopsConfig) -> str | None:
    """The sha256 of the project task's code as the kernel would ship it now (files, dependency wheels, module);
    None for a built-in task (its code is kops' own version)."""
    spec = task_kernel_spec(cfg)
    files, wheels = code_files(spec, cfg.root), wheel_files(cfg)
    return content_hash(files, wheels, kernel_spec(spec)) if files or wheels else None


def wheel_files(cfg: KopsConfig) -> list[Path]:
    """The dependency wheels of ``kernel.wheels`` (sorted); ConfigError when the folder does not exist."""
    if not cfg.kernel.wheels:
        return []
    folder = (cfg.root / cfg.kernel.wheels).resolve()
    if not folder.is_dir():
        raise ConfigError(f"kops.yaml `kernel.wheels`: {folder} is not a folder.",
                          "Point it at a folder of .whl files.")
    return sorted(folder.glob("*.whl"))


def content_hash(files: list[tuple[str, Path]], wheels: list[Path], module: str) -> str:
    h = hashlib.sha256(module.encode() + b"\0")
    for name, path in [*files, *((f"{WHEELS_DIR}/{w.name}", w) for w in wheels)]:
        h.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def build_code_wheel(dst: Path, files: list[tuple[str, Path]], content: str, label: str = "") -> Path:
    """``dst/kops_task_code-0.0.0-py3-none-any.whl`` holding ``files``; fixed timestamps, sorted entries.

    ``label``: a local version (``0.0.0+<label>``), so several versions of the code lie side by side in one
    flat dataset (a blend of runs that trained different code)."""
    return _code_wheel(dst, [(name, path.read_bytes()) for name, path in files], content, label)


def _code_wheel(dst: Path, entries: list[tuple[str, bytes]], content: str, label: str = "") -> Path:
    version = f"0.0.0+{label}" if label else "0.0.0"
    dist = f"{DIST_NAME}-{version}.dist-info"
    meta = (f"Metadata-Version: 2.1\nName: {DIST_NAME}\nVersion: {version}\n"
            f"Summary: a kops task's code (content {content[:HASH_CHARS]})\n")
    wheel = "Wheel-Version: 1.0\nGenerator: kops\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries = [*entries, (f"{dist}/METADATA", meta.encode()), (f"{dist}/WHEEL", wheel.encode())]
    record = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in entries) + f"{dist}/RECORD,,\n"
    entries.append((f"{dist}/RECORD", record.encode()))
    dst.mkdir(parents=True, exist_ok=True)
    path = dst / f"{DIST_NAME}-{version}-py3-none-any.whl"
    write_zip(path, entries, zipfile.ZIP_DEFLATED)
    return path


def relabel_code_wheel(wheel: Path, dst: Path, content: str) -> Path:
    """The code wheel ``wheel`` rewritten into ``dst`` as version ``0.0.0+<hash16>`` (same code files)."""
    with zipfile.ZipFile(wheel) as zf:
        entries = [(n, zf.read(n)) for n in sorted(zf.namelist()) if ".dist-info/" not in n]
    return _code_wheel(dst, entries, content, content[:HASH_CHARS])


def stage_code(cfg: KopsConfig, spec: str, folder: Path) -> tuple[str, Path, list[Path]] | None:
    """Write the code wheel, the dependency wheels and the marker into ``folder``; None for a built-in task.

    Returns (content sha256, wheel path, dependency wheel paths).
    """
    files = code_files(spec, cfg.root)
    wheels = wheel_files(cfg)
    if not files and not wheels:
        return None
    module = kernel_spec(spec)
    content = content_hash(files, wheels, module)
    wheel = build_code_wheel(folder, files, content)
    copied = [Path(shutil.copyfile(w, folder / w.name)) for w in wheels]  # flat: sub-folders would travel as zips
    manifest = {"content_sha256": content, "wheel": wheel.name, "module": module, "wheels": [w.name for w in wheels]}
    (folder / marker_name(content)).write_text(json.dumps(manifest, indent=2))
    return content, wheel, copied


def default_code_ref(cfg: KopsConfig) -> DatasetRef:
    return DatasetRef(cfg.kaggle_owner, f"{slugify(cfg.experiment_name, 40)}-code")


def marker_name(content: str) -> str:
    return f"{CODE_MARKER_PREFIX}{content[:HASH_CHARS]}.json"


def read_code_marker(folder: Path, content: str, what: str) -> dict[str, object]:
    """The marker of version ``content`` in a folder :func:`stage_code` wrote (a run's ``task-code`` artifact), its
    content_sha256 checked against ``content``; KopsError naming ``what`` when missing or different."""
    path = folder / marker_name(content)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        raise KopsError(f"{what} holds no readable {path.name}.",
                        "Retrain the run with: kops train") from None
    if not isinstance(manifest, dict) or manifest.get("content_sha256") != content:
        raise KopsError(f"{what}: {path.name} names content {str(manifest.get('content_sha256'))[:12]}, not "
                        f"{content[:12]} (its kops.task.code tag).", "Retrain the run with: kops train")
    return manifest


def stage_versions(folder: Path, sources: dict[str, Path]) -> list[dict[str, object]]:
    """Several versions of the task's code into one flat dataset ``folder``: each one's wheel relabelled
    ``0.0.0+<hash16>`` (unique file names), its dependency wheels, its marker. ``sources``: content sha256 → a
    folder :func:`stage_code` wrote. Returns the markers' manifests; two versions shipping a dependency wheel of one
    name but other bytes are refused (one flat folder holds one file of a name)."""
    manifests = []
    for content, src in sorted(sources.items()):
        manifest = read_code_marker(src, content, f"Task code {content[:12]}")
        wheel = relabel_code_wheel(src / str(manifest["wheel"]), folder, content)
        for name in map(str, manifest.get("wheels") or []):
            target = folder / name
            if target.exists() and target.read_bytes() != (src / name).read_bytes():
                raise KopsError(f"Two task code versions of the blend ship different {name} (one is "
                                f"{content[:12]}): one kernel's code dataset holds one file of that name.",
                                "Rename one of the wheels, or blend runs whose kernel.wheels agree")
            shutil.copyfile(src / name, target)
        manifest = {**manifest, "wheel": wheel.name}
        (folder / marker_name(content)).write_text(json.dumps(manifest, indent=2))
        manifests.append(manifest)
    return manifests


def ensure_code_dataset(cfg: KopsConfig, kaggle: Kaggle, spec: str,
                        others: dict[str, Path] | None = None) -> CodeDataset | None:
    """The code dataset version holding the task's current code: reused if unchanged, else a new version.

    ``others``: more versions of the code (content sha256 → a folder :func:`stage_code` wrote, e.g. a member's
    ``task-code`` artifact) that go into the same version, for a blend whose members trained other code; the
    latest version is reused when it holds every version's marker. None when the task is built in and no
    dependency wheels are named.
    """
    ref = default_code_ref(cfg)
    with tempfile.TemporaryDirectory(prefix="kops-code-") as tmp:
        folder = Path(tmp) / "dataset"
        staged = stage_code(cfg, spec, Path(tmp) / "current" if others else folder)
        if staged is None:
            return None
        content, wheel, wheels = staged
        versions: list[dict[str, object]] = []
        if others:
            versions = stage_versions(folder, {**others, content: Path(tmp) / "current"})
            wheel = folder / str(next(v["wheel"] for v in versions if v["content_sha256"] == content))
        markers = {marker_name(str(v["content_sha256"])) for v in versions} or {marker_name(content)}
        names = [w.name for w in wheels]
        info = kaggle.dataset_info(ref)
        if info is not None and info.get("status") == "ready" and markers <= set(kaggle.dataset_files(ref)):
            return CodeDataset(ref.ref, int(info["current_version_number"]), content, wheel.name, names,
                               kernel_spec(spec), created=False, versions=versions)
        (folder / "dataset-metadata.json").write_text(json.dumps({
            "id": ref.ref, "title": f"{cfg.experiment_name} code"[:50], "licenses": [{"name": cfg.dataset.license}],
            "description": "A kops task's code (and dependency wheels) for offline kernels, installed with "
                           "`pip install --no-index --no-deps`. Versioned by content."}))
        notes = f"kops task code {content[:12]}" + (f" + {len(versions) - 1} other version(s)" if others else "")
        version = upload_private_dataset(kaggle, ref, folder, info, notes)
    return CodeDataset(ref.ref, version, content, wheel.name, names, kernel_spec(spec), created=True,
                       versions=versions)
