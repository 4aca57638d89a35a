"""MovieLens parsers: every published layout → one canonical form.

Canonical tables (pandas):
- ``interactions``: ``user_id`` int64, ``item_id`` int64, ``rating`` float32, ``timestamp`` int64.
- ``items``: ``item_id`` int64, ``title`` str, ``year`` Int64 (nullable), ``genres`` list[str].
- ``users``: ``user_id`` int64 and, where the data set has them, ``age`` Int64, ``gender`` str,
  ``occupation`` str. For the CSV data sets (no user file) it is derived from the interactions.

Parsers read every field as text first and convert with explicit checks, so a bad value becomes a
:class:`DataError` naming the file, the column and the first offending lines — never a silent NaN.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from towers.data.raw import DataError, RawData
from towers.data.schema import EntityTable, Feature, InteractionTable, Schema

log = logging.getLogger(__name__)

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller",    "War", "Western",
)  # fmt: skip
# ML-1M encodes occupations as integers; these are the names from its README.
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
RATING_SCALES = {
    "ml-100k": (1.0, 5.0),
    "ml-1m": (1.0, 5.0),
    "ml-latest-small": (0.5, 5.0),
    "ml-20m": (0.5, 5.0),
    "ml-25m": (0.5, 5.0),
    "ml-32m": (0.5, 5.0),
    "synthetic": (1.0, 5.0),
}
_YEAR_IN_TITLE = re.compile(r"\s*\((\d{4})\)\s*$")
# MovieLens-1M's own age groups; ML-100K's exact ages fall into them too.
AGE_EDGES = (18, 25, 35, 45, 50, 56)
# Release-year buckets: old films pooled, then decades, 1990s split (ML-100K is 1990s-heavy).
YEAR_EDGES = (1950, 1960, 1970, 1980, 1990, 1995, 2000, 2010, 2020)
NO_GENRE = "(no genres listed)"


def movielens_schema(
    user_columns: list[str], rating_scale: tuple[float, float] = (1.0, 5.0)
) -> Schema:
    """The contract's description of MovieLens-shaped tables (this module's and the synthetic
    generator's): explicit ratings; age and release year bucketed; genres as a list (with a
    history profile); title and genres shown in answers."""
    by_name = {
        "age": Feature("age", "numeric", boundaries=AGE_EDGES),
        "gender": Feature("gender", "categorical"),
        "occupation": Feature("occupation", "categorical"),
    }
    return Schema(
        interactions=InteractionTable(
            "user_id", "item_id", rating="rating", rating_scale=rating_scale, timestamp="timestamp"
        ),
        items=EntityTable(
            "item_id",
            (
                Feature("genres", "multi_categorical", delimiter="|"),
                Feature("year", "numeric", boundaries=YEAR_EDGES, profile=False),
            ),
            display=("title", "genres"),
        ),
        users=EntityTable("user_id", tuple(f for n, f in by_name.items() if n in user_columns)),
    )


def with_schema(raw: RawData) -> RawData:
    """``raw`` with :func:`movielens_schema` attached and ``(no genres listed)`` removed from the
    genre lists (it says there are none)."""
    items = raw.items.copy()
    items["genres"] = [[g for g in gs if g != NO_GENRE] for gs in items["genres"]]
    schema = movielens_schema(list(raw.users.columns), raw.rating_scale)
    return RawData(raw.interactions, items, raw.users, raw.rating_scale, raw.source, schema)


def _read_text_table(path: Path, sep: str, names: list[str] | None, encoding: str) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    kwargs = {"sep": sep, "dtype": str, "keep_default_na": False, "encoding": encoding}
    if sep == "::":
        # pandas' C parser takes one-character separators only; "::" needs the python engine.
        kwargs["engine"] = "python"
    try:
        frame = pd.read_csv(path, header=None if names else 0, names=names, **kwargs)
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: file is empty") from err
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: cannot parse: {err}") from err
    if frame.empty:
        raise DataError(f"{path}: file is empty (a header but no data rows)")
    return frame


def _require_columns(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing} (found {list(frame.columns)})")


def _to_number(frame: pd.DataFrame, column: str, path: Path, dtype: str) -> pd.Series:
    """Converts a text column, raising with line numbers of values that are not numbers."""
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
    bad = values.isna()
    if bad.any():
        lines = (np.flatnonzero(bad.to_numpy())[:5] + 2).tolist()  # +1 header/1-based, approx.
        examples = frame.loc[bad, column].head(3).tolist()
        raise DataError(
            f"{path}: column '{column}' has {int(bad.sum())} non-numeric values "
            f"(e.g. {examples!r} near lines {lines})"
        )
    if dtype.startswith("int"):
        if not np.all(np.mod(values.to_numpy(np.float64), 1) == 0):
            raise DataError(f"{path}: column '{column}' must hold integers")
        # Text goes through float64, exact only below 2^53: larger ids or timestamps would be
        # silently altered (or wrap to int64's minimum), so they are refused as written.
        huge = values.abs().to_numpy(np.float64) >= 2.0**53
        if huge.any():
            examples = frame.loc[huge, column].str.strip().head(3).tolist()
            raise DataError(
                f"{path}: column '{column}' has {int(huge.sum())} integers too large to read "
                f"exactly (e.g. {examples!r}); ids and timestamps must be below 2^53"
            )
    return values.astype(dtype)


def _interactions(frame: pd.DataFrame, path: Path, cols: dict[str, str]) -> pd.DataFrame:
    """Text frame with source column names ``cols`` (canonical → source) → canonical."""
    _require_columns(frame, list(cols.values()), path)
    return pd.DataFrame(
        {
            "user_id": _to_number(frame, cols["user_id"], path, "int64"),
            "item_id": _to_number(frame, cols["item_id"], path, "int64"),
            "rating": _to_number(frame, cols["rating"], path, "float32"),
            "timestamp": _to_number(frame, cols["timestamp"], path, "int64"),
        }
    )


def _split_title_year(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``"Toy Story (1995)"`` → (``"Toy Story"``, 1995); titles without a year keep NA."""
    titles = titles.astype(str).str.strip()
    year = pd.to_numeric(titles.str.extract(_YEAR_IN_TITLE, expand=False), errors="coerce")
    return titles.str.replace(_YEAR_IN_TITLE, "", regex=True), year.astype("Int64")


def _users_from_interactions(interactions: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"user_id": np.sort(interactions["user_id"].unique()).astype(np.int64)})


# --- ML-100K ---------------------------------------------------------------------------------


def read_ml100k_grouplens(folder: Path) -> RawData:
    """GroupLens layout: ``u.data`` (tab), ``u.item`` and ``u.user`` (pipe, Latin-1)."""
    data_path, item_path, user_path = folder / "u.data", folder / "u.item", folder / "u.user"
    raw = _read_text_table(data_path, "\t", ["user", "item", "rating", "ts"], "latin-1")
    inter = _interactions(
        raw,
        data_path,
        {"user_id": "user", "item_id": "item", "rating": "rating", "timestamp": "ts"},
    )
    item_cols = ["item_id", "title", "release", "video", "url", *ML100K_GENRES]
    items_raw = _read_text_table(item_path, "|", item_cols, "latin-1")
    flags = items_raw[list(ML100K_GENRES)].to_numpy() == "1"
    title, year = _split_title_year(items_raw["title"])
    release_year = pd.to_datetime(items_raw["release"], format="%d-%b-%Y", errors="coerce").dt.year
    items = pd.DataFrame(
        {
            "item_id": _to_number(items_raw, "item_id", item_path, "int64"),
            "title": title,
            "year": year.fillna(release_year.astype("Int64")),
            "genres": [[g for g, f in zip(ML100K_GENRES, row, strict=True) if f] for row in flags],
        }
    )
    users_raw = _read_text_table(
        user_path, "|", ["user_id", "age", "gender", "occ", "zip"], "latin-1"
    )
    users = pd.DataFrame(
        {
            "user_id": _to_number(users_raw, "user_id", user_path, "int64"),
            "age": _to_number(users_raw, "age", user_path, "int64").astype("Int64"),
            "gender": users_raw["gender"].str.strip(),
            "occupation": users_raw["occ"].str.strip(),
        }
    )
    return RawData(inter, items, users, RATING_SCALES["ml-100k"], f"grouplens:{folder}")


def read_ml100k_recbole(folder: Path) -> RawData:
    """RecBole atomic files ``ml-100k.inter|.item|.user`` (tab, typed ``name:type`` headers)."""
    paths = {ext: folder / f"ml-100k.{ext}" for ext in ("inter", "item", "user")}
    frames = {}
    for ext, path in paths.items():
        frame = _read_text_table(path, "\t", None, "utf-8")
        frame.columns = [c.split(":")[0] for c in frame.columns]
        frames[ext] = frame
    inter = _interactions(
        frames["inter"],
        paths["inter"],
        {"user_id": "user_id", "item_id": "item_id", "rating": "rating", "timestamp": "timestamp"},
    )
    item_f = frames["item"]
    _require_columns(item_f, ["item_id", "movie_title", "release_year", "class"], paths["item"])
    items = pd.DataFrame(
        {
            "item_id": _to_number(item_f, "item_id", paths["item"], "int64"),
            "title": item_f["movie_title"].str.strip(),
            "year": pd.to_numeric(item_f["release_year"], errors="coerce").astype("Int64"),
            "genres": [s.split() if s.strip() else ["unknown"] for s in item_f["class"]],
        }
    )
    user_f = frames["user"]
    _require_columns(user_f, ["user_id", "age", "gender", "occupation"], paths["user"])
    users = pd.DataFrame(
        {
            "user_id": _to_number(user_f, "user_id", paths["user"], "int64"),
            "age": _to_number(user_f, "age", paths["user"], "int64").astype("Int64"),
            "gender": user_f["gender"].str.strip(),
            "occupation": user_f["occupation"].str.strip(),
        }
    )
    return RawData(inter, items, users, RATING_SCALES["ml-100k"], f"recbole:{folder}")


# --- ML-1M and the CSV family ------------------------------------------------------------------


def read_ml1m(folder: Path) -> RawData:
    """ML-1M: ``ratings.dat``, ``movies.dat``, ``users.dat`` with ``::`` separators, Latin-1."""
    r_path, m_path, u_path = folder / "ratings.dat", folder / "movies.dat", folder / "users.dat"
    raw = _read_text_table(r_path, "::", ["user", "item", "rating", "ts"], "latin-1")
    inter = _interactions(
        raw, r_path, {"user_id": "user", "item_id": "item", "rating": "rating", "timestamp": "ts"}
    )
    movies = _read_text_table(m_path, "::", ["item_id", "title", "genres"], "latin-1")
    title, year = _split_title_year(movies["title"])
    items = pd.DataFrame(
        {
            "item_id": _to_number(movies, "item_id", m_path, "int64"),
            "title": title,
            "year": year,
            "genres": movies["genres"].str.split("|"),
        }
    )
    users_raw = _read_text_table(
        u_path, "::", ["user_id", "gender", "age", "occ", "zip"], "latin-1"
    )
    occ = _to_number(users_raw, "occ", u_path, "int64")
    if (occ < 0).any() or (occ >= len(ML1M_OCCUPATIONS)).any():
        raise DataError(f"{u_path}: occupation codes must be in 0..{len(ML1M_OCCUPATIONS) - 1}")
    users = pd.DataFrame(
        {
            "user_id": _to_number(users_raw, "user_id", u_path, "int64"),
            "age": _to_number(users_raw, "age", u_path, "int64").astype("Int64"),
            "gender": users_raw["gender"].str.strip(),
            "occupation": [ML1M_OCCUPATIONS[i] for i in occ],
        }
    )
    return RawData(inter, items, users, RATING_SCALES["ml-1m"], f"ml-1m:{folder}")


def read_ml_csv(folder: Path, dataset: str) -> RawData:
    """ML-latest-small / 20M / 25M / 32M: ``ratings.csv`` and ``movies.csv`` (quoted titles)."""
    r_path, m_path = folder / "ratings.csv", folder / "movies.csv"
    raw = _read_text_table(r_path, ",", None, "utf-8")
    inter = _interactions(
        raw,
        r_path,
        {"user_id": "userId", "item_id": "movieId", "rating": "rating", "timestamp": "timestamp"},
    )
    movies = _read_text_table(m_path, ",", None, "utf-8")
    _require_columns(movies, ["movieId", "title", "genres"], m_path)
    title, year = _split_title_year(movies["title"])
    items = pd.DataFrame(
        {
            "item_id": _to_number(movies, "movieId", m_path, "int64"),
            "title": title,
            "year": year,
            "genres": movies["genres"].str.split("|"),
        }
    )
    users = _users_from_interactions(inter)
    return RawData(inter, items, users, RATING_SCALES[dataset], f"{dataset}:{folder}")


def read_folder(folder: Path, dataset: str) -> RawData:
    """Parses ``folder`` in whichever layout of ``dataset`` it holds."""
    folder = Path(folder)
    if dataset == "ml-100k":
        if (folder / "u.data").exists():
            return with_schema(read_ml100k_grouplens(folder))
        if (folder / "ml-100k.inter").exists():
            return with_schema(read_ml100k_recbole(folder))
        raise DataError(f"{folder}: neither GroupLens (u.data) nor RecBole (ml-100k.inter) files")
    if dataset == "ml-1m":
        return with_schema(read_ml1m(folder))
    if dataset in ("ml-latest-small", "ml-20m", "ml-25m", "ml-32m"):
        return with_schema(read_ml_csv(folder, dataset))
    raise DataError(f"unknown data set {dataset!r}; known: {sorted(RATING_SCALES)}")
