"""Schemathesis against the served OpenAPI schema: generated requests, real services, in process.

Every operation of ``/openapi.json`` gets generated requests, valid and invalid, over the real
two-tower and UserKNN services (the app of ``test_serving.py``). Each response must pass these
schemathesis checks: no 5xx; a status code the schema declares; a body matching the schema of
that status; the declared content type and headers; and invalid requests refused. Not "every
schema-valid request answered 2xx": a valid body may name item ids that are not in the catalog,
a declared 422 (``unknown_item``) that no static schema can foresee.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from serving.http import LocalBackend, create_app
from tests.unit.serving.test_serving import (  # noqa: F401  (fixtures, found by name)
    run_storage,
    two_tower,
    user_knn,
)

pytestmark = pytest.mark.slow
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.response_schema_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,
]
# What counts as refusing an invalid request: schemathesis's list, plus 413, which the server
# answers (before parsing) to a body over its cap, as a batch of more events than `maxItems` is.
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [*REJECTIONS, "5xx"]}}}
)


@pytest.fixture(scope="module")
def app(two_tower, user_knn):  # noqa: F811
    return create_app(LocalBackend({"two_tower": two_tower, "user_knn": user_knn}))


def test_every_operation_keeps_its_schema(app):
    api = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    operations = [result.ok() for result in api.get_all_operations()]
    paths = {op.path for op in operations}
    assert paths >= {"/recommend/{user_id}", "/recommend", "/similar/{item_id}", "/healthz"}
    sent: Counter[tuple[str, str]] = Counter()
    for operation in operations:
        raw = operation.definition.raw
        takes_input = bool(raw.get("parameters")) or "requestBody" in raw
        # An operation without parameters or body (/healthz) has no invalid request to make.
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if takes_input else [])
        for mode in modes:
            sent[operation.path, mode.value] += run_cases(operation, mode)
    # Every operation and mode really was exercised (/healthz has one possible request).
    assert sent["/healthz", "positive"] == 1, sent
    assert all(n >= 10 for (path, _), n in sent.items() if path != "/healthz"), sent


def run_cases(operation, mode: GenerationMode) -> int:
    """Sends up to 40 generated requests of ``mode`` to ``operation``; returns how many."""
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case):
        nonlocal sent
        sent += 1
        case.call_and_validate(checks=CHECKS)

    check()
    return sent
