"""Column mappings: which of the user's columns holds each contract field.

A mapping is the only thing that differs between the synthetic drops and a user's own files, so it is
validated strictly (unknown keys and named-but-missing columns fail loudly) while an optional column left
at its default name may simply be absent.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import polars as pl


@dataclass(frozen=True)
class CatalogMapping:
    """Contract column -> the user's column name (None = the user has no such column).

    Defaults match the synthetic landing format. An optional column left at its default
    name but absent from the data degrades to nulls/defaults; a column the user *named*
    explicitly but that is absent is a configuration error.
    """

    title_id: str = "title_id"
    title: str = "title"
    kind: str | None = "kind"
    genres: str | None = "genres"
    genres_delimiter: str = "|"
    year: str | None = "year"
    synopsis: str | None = "synopsis"
    language: str | None = "language"
    maturity: str | None = "maturity"

    def __post_init__(self) -> None:
        _validate_mapping(self, required=("title_id", "title"), settings=("genres_delimiter",))


@dataclass(frozen=True)
class InteractionMapping:
    """Contract column -> the user's column name for member events.

    ``rating``: a column holding explicit ratings (e.g. MovieLens ``rating``); rows with a
    rating and no event default to event "rate". ``value`` and ``rating`` are coalesced.
    """

    member_id: str = "member_id"
    title_id: str = "title_id"
    timestamp: str = "ts"
    event: str | None = "event"
    value: str | None = "value"
    rating: str | None = None

    def __post_init__(self) -> None:
        _validate_mapping(self, required=("member_id", "title_id", "timestamp"), settings=())


def _validate_mapping(mapping: Any, required: tuple[str, ...], settings: tuple[str, ...]) -> None:
    name = type(mapping).__name__
    for f in dataclasses.fields(mapping):
        value = getattr(mapping, f.name)
        if value is None and f.name not in required and f.name not in settings:
            continue
        if not isinstance(value, str) or not value:
            need = "a non-empty string" if f.name in required + settings else "a column name or null"
            raise ValueError(f"{name}.{f.name} must be {need}, got {value!r}")


M = TypeVar("M", CatalogMapping, InteractionMapping)


def mapping_from_json(cls: type[M], spec: str | Mapping[str, Any] | None) -> M:
    """Build a mapping from JSON text or a dict (env var, Dagster config); None/"" = defaults.

    Unknown keys raise a ValueError listing the allowed keys, so a typo such as
    ``"titleid"`` fails loudly instead of silently using the default column.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return cls()
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{cls.__name__} mapping is not valid JSON ({exc}); expected an object such as "
                f'{{"title_id": "movieId"}}, got {spec[:200]!r}'
            ) from exc
    if not isinstance(spec, Mapping):
        raise ValueError(f"{cls.__name__} mapping must be a JSON object, got {type(spec).__name__}: {spec!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; allowed keys are {allowed}")
    return cls(**dict(spec))


def catalog_mapping_from_json(spec: str | Mapping[str, Any] | None) -> CatalogMapping:
    return mapping_from_json(CatalogMapping, spec)


def interaction_mapping_from_json(spec: str | Mapping[str, Any] | None) -> InteractionMapping:
    return mapping_from_json(InteractionMapping, spec)


def _column(df: pl.DataFrame, mapping: Any, field: str, required: bool) -> str | None:
    """The user's column for ``field``, None when absent and allowed to be absent."""
    name = getattr(mapping, field)
    if name is None:
        return None
    if name in df.columns:
        return name
    default = next(f.default for f in dataclasses.fields(mapping) if f.name == field)
    if required or name != default:
        raise ValueError(
            f"{type(mapping).__name__}.{field} names column {name!r}, but the input has no such column "
            f"(columns: {df.columns}); set {field} to one of those columns"
            + ("" if required else " or to null if the data has none")
        )
    return None


def absent_optional_columns(df: pl.DataFrame, mapping: CatalogMapping | InteractionMapping) -> list[str]:
    """Contract fields that will be filled with nulls/defaults because the data lacks them."""
    optional = [
        f.name
        for f in dataclasses.fields(mapping)
        if f.name not in ("title_id", "title", "member_id", "timestamp", "genres_delimiter")
    ]
    return [f for f in optional if getattr(mapping, f) is None or getattr(mapping, f) not in df.columns]
