"""Pydantic models of the serving layer: app arguments, per-deployment ``user_config``, HTTP bodies.

Every model that a user writes (``ServingArgs`` in ``config.yaml``, the deployments'
``user_config``, the ``POST /recommend`` body) forbids unknown keys, so a typo is an error that
names the key instead of a setting that is silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

ModelName = Literal["two_tower", "user_knn"]
MODEL_NAMES: tuple[str, ...] = ("two_tower", "user_knn")
K_MAX = 100  # default cap on k: top-100 is already more than a page of results
MAX_LIKED_ITEMS = 500  # a cold-start user's history bag; more is a bulk job, not a request
MAX_BODY_BYTES = 64 * 1024  # the largest legitimate POST /recommend body is ~5 KB
MAX_EVENTS = 1000  # events per POST /events batch (64 KB holds ~700 of MovieLens's)


def _plain_artifact_name(name: str) -> str:
    """Artifact folders are single names under the storage root (``model``, ``model_v2``)."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise ValueError(f"artifact name must be a plain folder name, got {name!r}")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServingArgs(_Strict):
    """Arguments of the typed app builder (``args:`` in ``serving/config.yaml``)."""

    storage: str = Field(description="storage root holding data/, model/, index/ and knn/")
    model_artifact: str = Field("model", description="two-tower export to serve")
    index_artifact: str = Field("index", description="ScaNN index built for that export")
    knn_artifact: str = Field("knn", description="fitted UserKNN baseline")
    k_max: int = Field(K_MAX, ge=1, le=1000, description="largest k a request may ask for")
    max_body_bytes: int = Field(MAX_BODY_BYTES, ge=1024, le=1 << 20, description="POST limit")
    request_timeout_s: float = Field(10.0, gt=0, le=300, description="ingress → model deadline")
    max_batch_size: int = Field(16, ge=1, le=256, description="@serve.batch size of the models")
    batch_wait_timeout_s: float = Field(
        0.002, ge=0, le=1, description="@serve.batch wait for a fuller batch (0: never wait)"
    )
    events_path: str | None = Field(
        None,
        description="local SQLite file of the event log on the EventStore's node (None: "
        "events/events.sqlite under a local storage root; for a storage URI, a file under "
        "~/.local/share/ray_two_tower/events/)",
    )
    events_ack_timeout_s: float = Field(
        1.0, gt=0, le=30, description="POST /events: longest wait for replicas to apply events"
    )

    @field_validator("model_artifact", "index_artifact", "knn_artifact")
    @classmethod
    def _artifact_names(cls, name: str) -> str:
        return _plain_artifact_name(name)


class ModelSettings(_Strict):
    """``user_config`` of a model deployment; changing it rolls out a version in place.

    ``reconfigure`` loads the artifacts named here next to the ones being served and swaps them in
    only when they load and match (model version, dimension, catalog size); otherwise the old
    version keeps serving and ``/healthz`` reports the refused one.
    """

    storage: str | None = Field(None, description="storage root; None: the app's args.storage")
    model_artifact: str = Field("model", description="two-tower export or UserKNN folder")
    index_artifact: str = Field("index", description="index folder (two-tower only)")
    model_version: str | None = Field(None, description="refuse any other loaded version")
    max_batch_size: int = Field(16, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.002, ge=0, le=1)  # see docs/bench_serving.md
    precomputed_user_embeddings: bool = Field(
        True, description="known users: index/user_embeddings.npy instead of the user tower"
    )
    new_items: bool = Field(
        True, description="recommend items added after training (an index built with --items)"
    )

    @field_validator("model_artifact", "index_artifact")
    @classmethod
    def _artifact_names(cls, name: str) -> str:
        return _plain_artifact_name(name)


def _integral(value: Any) -> Any:
    """JSON Schema's ``integer`` includes ``10.0``: an integral float becomes the int; anything
    else (``"7"``, ``true``, ``10.5``) goes on to strict validation, which refuses it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_integral)]


class _StrictBody(BaseModel):
    """Request bodies: no unknown keys and no coercion (``"7"`` or ``true`` is not an id)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class UserFeatures(BaseModel):
    """The schema's user features of a cold-start user, by name; every one is optional (None or
    absent: unknown). The served ``/openapi.json`` lists them with their types and allowed
    values (:func:`feature_json_schema`, from the served model); the handler checks the values."""

    model_config = ConfigDict(extra="allow")


def feature_json_schema(fitted: dict[str, Any]) -> dict[str, Any]:
    """JSON schema of one raw user-feature value from its fitted encoder (``FittedFeature``'s
    dict): categorical values as an ``enum`` of the vocabulary, numbers, lists, text."""
    kind, vocabulary = fitted["kind"], fitted.get("vocabulary") or []
    if kind == "categorical":
        value: dict[str, Any] = {"type": "string", "enum": vocabulary}
    elif kind == "multi_categorical":
        value = {"type": "array", "items": {"type": "string", "enum": vocabulary}}
    elif kind == "numeric":
        value = {"type": "number"}
    elif kind == "text":
        value = {"type": "string"}
    else:  # vector
        dim = fitted["dim"]
        value = {"type": "array", "items": {"type": "number"}, "minItems": dim, "maxItems": dim}
    return {"anyOf": [value, {"type": "null"}], "description": f"{kind} user feature"}


def described_user(names: list[str]) -> dict[str, Any]:
    """What the handler needs, said in the body's JSON schema: at least one liked item, or a
    feature with a value (an empty description is a 422 ``empty_user``)."""
    return {
        "anyOf": [
            {"required": ["liked_item_ids"], "properties": {"liked_item_ids": {"minItems": 1}}},
            {
                "required": ["features"],
                "properties": {
                    "features": {
                        "type": "object",
                        "anyOf": [
                            {"required": [n], "properties": {n: {"not": {"type": "null"}}}}
                            for n in names
                        ]
                        or [{"not": {}}],  # no user features: only liked items describe a user
                    }
                },
            },
        ]
    }


class ColdStartRequest(_StrictBody):
    """``POST /recommend`` body: a user outside the training data, described by liked items
    and/or features (at least one of them)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=described_user([]))

    features: UserFeatures | None = None
    liked_item_ids: list[JsonInt | str] = Field(
        default_factory=list,
        max_length=MAX_LIKED_ITEMS,
        description="raw item ids the user liked (their history bag; excluded from results)",
    )


Id = int | str  # as the data set has them (MovieLens: integers)
_DISPLAY = ConfigDict(
    extra="allow",
    json_schema_extra={"description": "plus the data set's display columns (title, genres, ...)"},
)


class Item(BaseModel):
    model_config = _DISPLAY

    item_id: Id
    score: float


class RecommendResponse(BaseModel):
    user_id: Id | None = Field(description="raw user id; null for a cold-start user")
    cold_start: bool
    model: ModelName
    model_version: str
    k: int
    items: list[Item] = Field(description="best first; seen (or liked) items excluded")


class SimilarResponse(BaseModel):
    model_config = _DISPLAY

    item_id: Id
    model: ModelName
    model_version: str
    k: int
    items: list[Item] = Field(description="best first; the item itself excluded")


class HistoryItem(BaseModel):
    model_config = _DISPLAY

    item_id: Id
    rating: float = Field(description="the rating on the data set's scale (implicit: the weight)")
    timestamp: int = Field(description="Unix seconds")
    source: Literal["training", "event"] = Field(description="the training data or POST /events")
    event_id: str | None = Field(None, description="the event's id (events only)")


class HistoryResponse(BaseModel):
    user_id: Id
    k: int
    n_interactions: int = Field(description="all of the user's training interactions")
    n_events: int = Field(description="the user's events recorded since (POST /events)")
    items: list[HistoryItem] = Field(description="events (newest first), then training items")


class Event(_StrictBody):
    """One interaction, in the data set's terms; checked as a row of the interactions file."""

    event_id: str = Field(min_length=1, max_length=128, description="the client's id; a replay "
                          "of an id already stored is ignored")  # fmt: skip
    user_id: JsonInt | str = Field(description="raw user id; a new user is known from here on")
    item_id: JsonInt | str = Field(description="raw item id from the served catalog")
    rating: float | None = Field(None, description="explicit data: required, inside its scale")
    weight: float | None = Field(None, description="implicit data: >= 0 (default 1)")
    timestamp: JsonInt | float | str | None = Field(
        None, description="Unix seconds or ms, or ISO-8601 text; default: when received"
    )


class EventsRequest(_StrictBody):
    """``POST /events`` body: a batch stored whole or not at all."""

    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)


class EventsResponse(BaseModel):
    accepted: int = Field(description="events stored now")
    duplicates: int = Field(description="events whose event_id was already stored: ignored")
    applied: bool = Field(
        description="every serving replica answers with these events already (false: one "
        "did not confirm in time and catches up; the events are stored either way)"
    )


class UsersResponse(BaseModel):
    n_users: int
    user_ids: list[Id] = Field(description="the first known users by id, for picking one")
    user_id_type: Literal["integer", "string"]
    item_id_type: Literal["integer", "string"]


class ErrorResponse(BaseModel):
    error: str = Field(description="machine-readable code, e.g. unknown_user")
    message: str = Field(description="what is wrong, for a human")
    details: list[dict] | None = None
