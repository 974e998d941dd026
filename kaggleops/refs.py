"""Identifiers as small frozen value types: parse(), __str__ and url(); no string-splitting elsewhere."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, TypeVar

KAGGLE_WEB = "https://www.kaggle.com"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
R = TypeVar("R", bound="_OwnedRef")


def _split_owner_slug(text: str, kind: str) -> tuple[str, str, int | None]:
    parts = text.strip().strip("/").split("/")
    version: int | None = None
    if len(parts) == 3 and parts[2].isdigit():
        version = int(parts[2])
        parts = parts[:2]
    if len(parts) == 4 and parts[2] == "versions" and parts[3].isdigit():
        version = int(parts[3])
        parts = parts[:2]
    if len(parts) != 2 or not _OWNER.match(parts[0]) or not _SLUG.match(parts[1]):
        raise ValueError(
            f"Not a {kind} reference: {text!r}. Expected owner/slug (lowercase slug, e.g. alice/tse-roberta)."
        )
    return parts[0], parts[1], version


@dataclass(frozen=True)
class _OwnedRef:
    """``owner/slug`` with an optional version; subclasses name the kind and the URL path."""

    owner: str
    slug: str
    version: int | None = None

    KIND: ClassVar[str] = ""
    PATH: ClassVar[str] = ""

    @classmethod
    def parse(cls: type[R], text: str) -> R:
        return cls(*_split_owner_slug(text, cls.KIND))

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    def __str__(self) -> str:
        return self.ref if self.version is None else f"{self.ref}/{self.version}"

    def url(self, base: str = KAGGLE_WEB) -> str:
        return f"{base}/{self.PATH}/{self.ref}"


@dataclass(frozen=True)
class DatasetRef(_OwnedRef):
    """A Kaggle dataset, optionally pinned to a version: ``DatasetRef.parse("alice/tse-f0/3")``."""

    KIND: ClassVar[str] = "dataset"
    PATH: ClassVar[str] = "datasets"


@dataclass(frozen=True)
class KernelRef(_OwnedRef):
    """A Kaggle kernel (notebook/script), optionally a version: ``KernelRef.parse("alice/tse-infer/2")``."""

    KIND: ClassVar[str] = "kernel"
    PATH: ClassVar[str] = "code"


@dataclass(frozen=True)
class RunRef:
    """An MLflow run: its 32-hex id, optionally the tracking store it lives in: ``RunRef.parse("3f2a…")``.

    ``url()`` is the run's page when the store is a server (``http(s)://``), else None.
    """

    run_id: str
    tracking_uri: str | None = None

    @classmethod
    def parse(cls, text: str, tracking_uri: str | None = None) -> RunRef:
        run_id = text.strip().strip("/").rsplit("/", 1)[-1]
        if not _RUN_ID.match(run_id):
            raise ValueError(f"Not an MLflow run id: {text!r}. Expected 32 hex characters, e.g. the id "
                             "`kops train` printed.")
        return cls(run_id, tracking_uri)

    @property
    def short(self) -> str:
        return self.run_id[:8]

    def __str__(self) -> str:
        return self.run_id

    def url(self, experiment_id: str = "0") -> str | None:
        if not (self.tracking_uri or "").startswith(("http://", "https://")):
            return None
        return (f"{str(self.tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{self.run_id}"
                "?workflowType=machine_learning")  # MLflow 3's model-training run page, not GenAI's


@dataclass(frozen=True)
class CompetitionRef:
    """A Kaggle competition by slug: ``CompetitionRef.parse("digit-recognizer")``."""

    slug: str

    @classmethod
    def parse(cls, text: str) -> CompetitionRef:
        slug = text.strip().strip("/").rsplit("/", 1)[-1]
        if not _SLUG.match(slug):
            raise ValueError(f"Not a competition slug: {text!r}. Expected e.g. digit-recognizer.")
        return cls(slug)

    def __str__(self) -> str:
        return self.slug

    def url(self, base: str = KAGGLE_WEB) -> str:
        return f"{base}/competitions/{self.slug}"

    def rules_url(self, base: str = KAGGLE_WEB) -> str:
        return f"{self.url(base)}/rules"


_FRAMEWORK = re.compile(r"^[a-z][a-z0-9]*$")


@dataclass(frozen=True)
class ModelRef:
    """A Kaggle Model instance (framework + variation), optionally a version:
    ``ModelRef.parse("alice/tse/transformers/fold-0/2")``."""

    owner: str
    slug: str
    framework: str
    variation: str
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        parts = text.strip().strip("/").split("/")
        version = int(parts.pop()) if len(parts) == 5 and parts[4].isdigit() else None
        if (len(parts) != 4 or not _OWNER.match(parts[0]) or not _SLUG.match(parts[1])
                or not _FRAMEWORK.match(parts[2]) or not _SLUG.match(parts[3])):
            raise ValueError(f"Not a model reference: {text!r}. Expected owner/model/framework/variation "
                             "(e.g. alice/tse-roberta/transformers/fold-0).")
        return cls(parts[0], parts[1], parts[2], parts[3], version)

    @property
    def model(self) -> str:
        return f"{self.owner}/{self.slug}"

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}/{self.framework}/{self.variation}"

    def __str__(self) -> str:
        return self.ref if self.version is None else f"{self.ref}/{self.version}"

    def url(self, base: str = KAGGLE_WEB) -> str:
        return f"{base}/models/{self}"


def slugify(text: str, max_len: int = 50) -> str:
    """Kaggle-style slug: lowercase, [a-z0-9-], collapsed dashes, at most ``max_len`` chars."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-")
