"""Identifiers as small frozen value types: parse(), __str__ and url(); no string-splitting elsewhere."""

from __future__ import annotations

import re
from dataclasses import dataclass

KAGGLE_WEB = "https://www.kaggle.com"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


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
class DatasetRef:
    """A Kaggle dataset, optionally pinned to a version: ``DatasetRef.parse("alice/tse-f0/3")``."""

    owner: str
    slug: str
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> DatasetRef:
        return cls(*_split_owner_slug(text, "dataset"))

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    def __str__(self) -> str:
        return self.ref if self.version is None else f"{self.ref}/{self.version}"

    def url(self, base: str = KAGGLE_WEB) -> str:
        return f"{base}/datasets/{self.ref}"


@dataclass(frozen=True)
class KernelRef:
    """A Kaggle kernel (notebook/script), optionally a version: ``KernelRef.parse("alice/tse-infer/2")``."""

    owner: str
    slug: str
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> KernelRef:
        return cls(*_split_owner_slug(text, "kernel"))

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    def __str__(self) -> str:
        return self.ref if self.version is None else f"{self.ref}/{self.version}"

    def url(self, base: str = KAGGLE_WEB) -> str:
        return f"{base}/code/{self.ref}"


@dataclass(frozen=True)
class CompetitionRef:
    """A Kaggle competition by slug: ``CompetitionRef.parse("tweet-sentiment-extraction")``."""

    slug: str

    @classmethod
    def parse(cls, text: str) -> CompetitionRef:
        slug = text.strip().strip("/").rsplit("/", 1)[-1]
        if not _SLUG.match(slug):
            raise ValueError(f"Not a competition slug: {text!r}. Expected e.g. tweet-sentiment-extraction.")
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
