"""The typed Serve app builder: ``serve run serving.app:build_app storage=runs/demo``.

``serving/config.yaml`` names it as ``import_path`` with ``args:`` validated by
:class:`serving.schemas.ServingArgs` (unknown keys are an error). Replicas, autoscaling and each
model's ``user_config`` (which version to serve, batch size) go in the YAML's ``deployments:``
section, under the names ``Ingress``, ``TwoTower``, ``UserKNN`` and ``EventStore`` (one replica:
the event log's only writer).

No ``from __future__ import annotations`` here: Serve reads the builder's parameter annotation
as a class to validate ``args`` into it.
"""

from ray import serve

from serving.deployments import (
    EventStoreDeployment,
    Ingress,
    TwoTowerDeployment,
    UserKNNDeployment,
)
from serving.event_feed import resolve_events_path
from serving.schemas import ServingArgs


def model_user_config(args: ServingArgs, **artifacts: str) -> dict:
    """The initial ``user_config`` of a model deployment (the YAML may replace it).

    The storage root is not in it: the deployments get ``args.storage`` as their default, so a
    YAML ``user_config`` that names only artifacts still reads the app's storage.
    """
    return {
        **artifacts,
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_timeout_s,
    }


def build_app(args: ServingArgs) -> serve.Application:
    """Ingress → {TwoTower, UserKNN} → EventStore, all reading ``args.storage``."""
    if not isinstance(args, ServingArgs):  # called directly with a dict
        args = ServingArgs.model_validate(args)
    events_path = resolve_events_path(args.storage, args.events_path)
    event_store = EventStoreDeployment.bind(events_path, args.events_ack_timeout_s)
    two_tower = TwoTowerDeployment.options(
        user_config=model_user_config(
            args, model_artifact=args.model_artifact, index_artifact=args.index_artifact
        )
    ).bind(args.storage, event_store)
    user_knn = UserKNNDeployment.options(
        user_config=model_user_config(args, model_artifact=args.knn_artifact)
    ).bind(args.storage, event_store)
    return Ingress.bind(
        two_tower,
        user_knn,
        args.k_max,
        args.max_body_bytes,
        args.request_timeout_s,
        event_store,
    )
