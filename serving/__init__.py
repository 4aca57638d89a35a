"""Ray Serve application: a FastAPI ingress over a two-tower deployment and a UserKNN deployment.

* ``serving.recommenders``: request handling without Ray (ids, validation, top-k, JSON).
* ``serving.artifacts``: loading ``model/``, ``index/``, ``knn/`` and ``data/`` from storage.
* ``serving.http``: the FastAPI routes and error format, over any backend.
* ``serving.deployments`` / ``serving.app``: the Serve deployments and the typed app builder.
* ``serving/config.yaml``: ``serve run serving/config.yaml`` / ``serve deploy serving/config.yaml``.
* ``python -m serving --storage URI``: run it locally (``--help``).
"""
