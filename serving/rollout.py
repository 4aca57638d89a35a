"""Rolling a new model version out to a running Serve app, as ``serve deploy`` of its edited config
does: the app's deployed config applied again with the model deployments' ``user_config``
naming the new artifacts. Serve treats a ``user_config`` change as a lightweight update: every
replica's ``reconfigure`` loads the new version beside the served one and swaps it in, so no
request fails (``serving.deployments``; a version that fails to load is refused and the old one
keeps serving, which :func:`roll_out` reports as an error).

It reaches Serve's controller through the Ray cluster this process is connected to
(``ray.serve.context._get_global_client``, what ``serve deploy`` reaches through the dashboard).
An app deployed from Python (``serve.run``, as ``python -m serving`` does) has no config to apply
again: roll out by hand there (the printed ``user_config``).
"""

from __future__ import annotations

import copy
import time
from typing import Any

from serving.server import APP_NAME

MODEL_DEPLOYMENTS = ("TwoTower", "UserKNN")


class RolloutError(RuntimeError):
    """The new version was not rolled out; the message says why and what to do."""


def roll_out(
    user_configs: dict[str, dict[str, Any]],
    expected_versions: dict[str, str],
    app: str = APP_NAME,
    timeout_s: float = 120.0,
) -> bool:
    """Applies ``app``'s config again with ``user_configs`` (by deployment name) merged in and
    waits until every replica serves ``expected_versions`` (by deployment name).

    Returns:
        False when no Serve app ``app`` runs on this Ray cluster (nothing to roll out to).

    Raises:
        RolloutError: the app was not deployed from a config, or a version was refused or not
            served within ``timeout_s`` (the old one keeps serving).
    """
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    if not ray.is_initialized():
        return False
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return False
    apps = client.get_serve_details().get("applications", {})
    if app not in apps:
        return False
    configs = []
    for name, details in apps.items():
        config = details.get("deployed_app_config")
        if config is None:
            raise RolloutError(
                f"Serve app {name!r} was deployed from Python, not from a config: set the "
                f"user_config of its deployments to {user_configs} and deploy it again"
            )
        config = copy.deepcopy(config)
        if name == app:
            _merge(config, user_configs)
        configs.append(config)
    # Not blocking: the replicas' health says when the new version answers (or was refused).
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": configs}))
    deadline = time.monotonic() + timeout_s
    for deployment, version in expected_versions.items():
        handle = serve.get_deployment_handle(deployment, app)
        while True:
            health = handle.health.remote().result(timeout_s=timeout_s)
            if health.get("refused_version"):
                raise RolloutError(f"{deployment} refused {version}: {health['refused_version']}")
            if health.get("model_version") == version and _all_replicas(handle, version):
                break
            if time.monotonic() > deadline:
                raise RolloutError(f"{deployment} still serves {health.get('model_version')}")
            time.sleep(0.2)
    return True


def _merge(config: dict[str, Any], user_configs: dict[str, dict[str, Any]]) -> None:
    deployments = config.setdefault("deployments", [])
    for name, values in user_configs.items():
        entry = next((d for d in deployments if d.get("name") == name), None)
        if entry is None:
            entry = {"name": name}
            deployments.append(entry)
        entry["user_config"] = {**(entry.get("user_config") or {}), **values}


def _all_replicas(handle: Any, version: str, probes: int = 8) -> bool:
    """Several health calls (routed over the replicas) all answer ``version``."""
    answers = [handle.health.remote() for _ in range(probes)]
    return all(a.result().get("model_version") == version for a in answers)
