"""The "Kaggle image" environment `kops kernel run-local` runs kernels in: a virtual environment that holds only
what the Kaggle Python image preinstalls (the pinned list ``kaggle_image.txt`` beside this module).

Not kops' own interpreter: a task importing a package the image lacks fails here as it would on Kaggle, instead
of passing because kops (or MLflow, or the task's folder) happens to be importable. The kernel installs the kops
runtime and the task's code itself, from their datasets, with ``pip install --no-index``.

Where: ``~/.cache/kops/kaggle-image/<key>/`` (``KOPS_CACHE_DIR`` or ``XDG_CACHE_HOME`` move it), ``<key>`` a hash of
the list's text and the Python version, so a changed list builds a new one. Built once per machine, under a file
lock (two kops processes never build the same one twice), finished by a marker ``kops-image.json`` written last;
a folder without it is removed and built again.

How, per pinned ``name==version`` (the list is closed under dependencies: every entry goes in with ``--no-deps``):

- kops' own environment has that exact version (same interpreter): its files are **linked** in (symlinks to the
  distribution's top-level packages and modules, as its RECORD lists them; a folder shared with an unpinned
  distribution is linked file by file, so nothing unpinned shows) and its ``.dist-info`` is copied without RECORD
  (so a ``pip uninstall`` in the image cannot reach kops' environment). No download, no copy of torch.
- otherwise it is **installed** with kops' pip (``pip --python <image python> install --no-deps``), from the
  package index pip is configured with.

Then the image's own interpreter checks that every pin is there at its version and that ``kaggleops`` is not.

Example:
    >>> image = ensure_image()  # doctest: +SKIP
    >>> image.python, image.describe()  # doctest: +SKIP
    (PosixPath('/home/alice/.cache/kops/kaggle-image/3f2a…/bin/python'), 'Kaggle image 3f2a… (72 packages, cached)')
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kaggleops.errors import ImageError
from kaggleops.files import file_lock

ENV_CACHE_DIR = "KOPS_CACHE_DIR"
IMAGE_LIST = Path(__file__).with_name("kaggle_image.txt")
IMAGE_DIR = "kaggle-image"
MARKER = "kops-image.json"
KEY_CHARS = 16
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")
SKIPPED_DIST_INFO = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")
PIP_TIMEOUT_S = 1800
CHECK_TIMEOUT_S = 120

# Run by the image's own interpreter (-I: no PYTHONPATH, no script folder): which pins are missing, whether
# kops is importable, and where its site-packages are.
CHECK_SCRIPT = """
import importlib.metadata as md, importlib.util, json, sys, sysconfig
missing = {}
for name, version in json.loads(sys.argv[1]).items():
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have is None or have.split("+")[0] != version:
        missing[name] = have
print(json.dumps({"missing": missing, "kaggleops": importlib.util.find_spec("kaggleops") is not None,
                  "purelib": sysconfig.get_paths()["purelib"]}))
"""


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class ImageEnv:
    """The interpreter run-local runs kernels with: the built image, or the one ``--python`` names."""

    python: Path
    root: Path | None = None  # the image's folder; None for --python
    key: str | None = None
    packages: int = 0
    linked: int = 0
    installed: int = 0
    built_s: float | None = None  # seconds this call spent building it; None when it was already there

    def describe(self) -> str:
        """One line for the report: which interpreter, and whether it was built now."""
        if self.key is None:
            return f"{self.python} (--python)"
        how = "cached" if self.built_s is None else (f"built in {self.built_s:.0f} s: {self.linked} linked from kops' "
                                                     f"environment, {self.installed} installed")
        return f"Kaggle image {self.key} ({self.packages} packages, {how})"

    def as_dict(self) -> dict[str, object]:
        return {"python": str(self.python), "root": str(self.root) if self.root else None, "key": self.key,
                "packages": self.packages, "built_s": self.built_s, "linked": self.linked,
                "installed": self.installed}


def read_pins(path: Path = IMAGE_LIST) -> dict[str, str]:
    """``{normalized name: version}`` of a pinned list (``name==version`` per line, ``#`` comments)."""
    pins: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        if not match:
            raise ImageError(f"{path}:{number}: {line!r} is not a pinned `name==version` line.",
                             "Pin every package of the Kaggle image list to one version.")
        pins[_normal(match.group(1))] = match.group(2)
    return pins


def image_key(list_text: str, python: str = sys.version) -> str:
    """The cache key of an image: the list's text, the Python version and the platform."""
    ident = f"{list_text}\n{platform.python_implementation()} {python} {sysconfig.get_platform()}"
    return hashlib.sha256(ident.encode()).hexdigest()[:KEY_CHARS]


def cache_root() -> Path:
    """``KOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/kops``, else ``~/.cache/kops`` (the lookup of ``kops data``'s
    cache, :func:`kaggleops.stages.data.cache_root`, which this layer cannot import)."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kops"


def image_python(root: Path) -> Path:
    return root / "bin" / "python"


def ensure_image(list_path: Path = IMAGE_LIST, progress: Callable[[str], None] | None = None) -> ImageEnv:
    """The Kaggle image environment of ``list_path``: the cached one, or built now (once per machine).

    ``progress`` gets one line when a build starts. ImageError when it cannot be built.
    """
    text = list_path.read_text()
    pins = read_pins(list_path)
    key = image_key(text)
    root = cache_root() / IMAGE_DIR / key
    with file_lock(root.with_name(f"{key}.lock")):
        found = _reuse(root, pins)
        if found is not None:
            return found
        if progress:
            progress(f"kops: building the Kaggle image environment ({len(pins)} packages of {list_path.name}) in "
                     f"{root} (once; later runs reuse it)")
        return _build(root, key, pins)


def _reuse(root: Path, pins: dict[str, str]) -> ImageEnv | None:
    """The built image at ``root`` when its marker is there and every linked source still exists."""
    marker = root / MARKER
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    sources = [Path(p) for p in data.get("link_sources", [])]
    if data.get("pins") != pins or not image_python(root).exists() or not all(p.exists() for p in sources):
        return None  # kops' environment changed under the links (an upgrade): build it again
    return ImageEnv(image_python(root), root, root.name, len(pins), int(data.get("linked", 0)),
                    int(data.get("installed", 0)))


def _build(root: Path, key: str, pins: dict[str, str]) -> ImageEnv:
    start = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], "create the virtual environment")
    purelib = Path(_check(root, {})["purelib"])
    linked, sources = link_distributions(pins, purelib)
    rest = {name: version for name, version in pins.items() if name not in linked}
    if rest:
        _install(root, rest)
    found = _check(root, pins)
    if found["missing"] or found["kaggleops"]:
        problem = (f"missing or at another version: {found['missing']}" if found["missing"]
                   else "kaggleops is importable in it")
        raise ImageError(f"The Kaggle image environment in {root} is not the pinned list ({problem}).",
                         "Remove that folder and run again, or pass --python PATH.")
    seconds = round(time.perf_counter() - start, 1)
    (root / MARKER).write_text(json.dumps({"pins": pins, "python": sys.version, "linked": len(linked),
                                           "installed": len(rest), "built_s": seconds,
                                           "link_sources": sorted(map(str, sources))}, indent=1))
    return ImageEnv(image_python(root), root, key, len(pins), len(linked), len(rest), seconds)


def _run(cmd: list[str], what: str, timeout_s: float = PIP_TIMEOUT_S) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        last = next((ln for ln in reversed(proc.stderr.strip().splitlines()) if ln.strip()), "no message")
        raise ImageError(f"Could not {what} for the Kaggle image environment: {last.strip()}",
                         "Check that pip reaches its package index, or pass --python PATH (an interpreter "
                         "that has the image's packages).")
    return proc.stdout


def _check(root: Path, pins: dict[str, str]) -> dict:
    out = _run([str(image_python(root)), "-I", "-c", CHECK_SCRIPT, json.dumps(pins)], "check the interpreter",
               CHECK_TIMEOUT_S)
    return json.loads(out.strip().splitlines()[-1])


def _install(root: Path, pins: dict[str, str]) -> None:
    specs = [f"{name}=={version}" for name, version in pins.items()]
    _run([sys.executable, "-m", "pip", "--python", str(image_python(root)), "install", "--no-deps", "--no-input",
          "--disable-pip-version-check", "--no-warn-script-location", "--quiet", *specs],
         f"install {', '.join(specs)}")


# ---- linking kops' own distributions -------------------------------------------------------------------------

@dataclass
class _Dist:
    name: str
    version: str
    site: Path
    dist_info: Path
    files: list[str] = field(default_factory=list)  # paths relative to site, inside it

    @property
    def tops(self) -> set[str]:
        return {f.split("/", 1)[0] for f in self.files}


def host_distributions() -> dict[str, _Dist]:
    """kops' own environment's distributions (its site-packages only), by normalized name."""
    import importlib.metadata as md

    found: dict[str, _Dist] = {}
    for sp in _site_dirs():
        for dist in md.distributions(path=[str(sp)]):
            name = _normal(dist.metadata["Name"] or "")
            metadata = next((f for f in dist.files or [] if f.name == "METADATA"
                             and f.parent.name.endswith(".dist-info")), None)
            if not name or name in found or metadata is None:
                continue  # no RECORD (or an .egg-info): not linked, installed instead
            files = [f.as_posix() for f in dist.files or [] if not f.as_posix().startswith("..")]
            found[name] = _Dist(name, dist.version, sp, sp / metadata.parent, files)
    return found


def _site_dirs() -> list[Path]:
    dirs = [Path(p) for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]]
    return list(dict.fromkeys(d.resolve() for d in dirs if d.is_dir()))


def link_distributions(pins: dict[str, str], purelib: Path) -> tuple[set[str], list[Path]]:
    """Link into ``purelib`` every pinned distribution kops' environment has at the pinned version.

    Returns (the names linked, the paths the links depend on). A top-level folder that only linked
    distributions own is one symlink; one shared with another distribution (``__pycache__``, a namespace
    package) is made as a folder and its pinned files are linked one by one.
    """
    host = host_distributions()
    chosen = {n: d for n, d in host.items() if n in pins and d.version.split("+")[0] == pins[n]}
    owners: dict[tuple[Path, str], set[str]] = {}
    for dist in host.values():
        for top in dist.tops:
            owners.setdefault((dist.site, top), set()).add(dist.name)
    sources: list[Path] = []
    for dist in chosen.values():
        info_name = dist.dist_info.name
        for top in sorted(dist.tops - {info_name}):
            src = dist.site / top
            if owners[(dist.site, top)] <= set(chosen) and src.exists():
                _symlink(src, purelib / top)
            else:
                for rel in (f for f in dist.files if f.split("/", 1)[0] == top):
                    if (dist.site / rel).is_file():
                        _symlink(dist.site / rel, purelib / rel)
        _copy_dist_info(dist.dist_info, purelib / info_name)
        sources.append(dist.dist_info)
    return set(chosen), sources


def _symlink(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src, target_is_directory=src.is_dir())


def _copy_dist_info(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if path.is_dir() or rel.as_posix() in SKIPPED_DIST_INFO:
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst / rel)
    (dst / "INSTALLER").write_text("kops (linked from kops' environment)\n")


def kernel_python(python: Path | str | None, progress: Callable[[str], None] | None = None) -> ImageEnv:
    """The interpreter for a kernel: ``python`` as given (``--python``), else the Kaggle image environment."""
    if python is None:
        return ensure_image(progress=progress)
    path = Path(python).expanduser()
    resolved = shutil.which(str(path)) if not path.is_absolute() and os.sep not in str(path) else str(path)
    if not resolved or not Path(resolved).is_file() or not os.access(resolved, os.X_OK):
        raise ImageError(f"--python {python}: no such interpreter.",
                         "Pass the path of a python executable, or leave --python out to use the Kaggle image "
                         "environment.")
    return ImageEnv(Path(resolved).absolute())
