"""The load generator of the serving benchmarks: ``wrk`` (Debian: ``apt-get install -y wrk``)
with a Lua script that asks for a random known user's top-k each request (and, for the events
scenario, posts one new event instead) and prints throughput, p50/p99 latency and errors
(socket errors, timeouts and non-2xx answers). ``bench.bench_serving``, ``bench.soak`` and
``bench.serving_cpu`` load their targets with it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

LUA = """
local ids = {%(ids)s}
local counter = 0
function setup(thread) counter = counter + 1; thread:set("seed", counter) end
function init(args) math.randomseed(seed * 7919) end
function request()
  return wrk.format("GET", "/recommend/" .. ids[math.random(#ids)] .. "?k=%(k)d&model=%(model)s")
end
%(events)s
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "errors": %%d, "non2xx": %%d, '
    .. '"p50_us": %%d, "p99_us": %%d}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


EVENTS_LUA = """
local items = {%(items)s}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  counter = (counter or 0) + 1
  local body = string.format('{"events": [{"event_id": "w%%d-%%d-%%d", "user_id": %%d, '
    .. '"item_id": %%d, %(value)s}]}', seed, counter, math.random(1e9),
    ids[math.random(#ids)], items[math.random(#items)])
  return wrk.format(nil, "/events", nil, body)
end
"""


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: install it with `apt-get install -y wrk` (Debian/Ubuntu)")


def write_script(
    path: Path,
    ids: Sequence[int],
    items: Sequence[int],
    scenario: str,
    k: int,
    model: str,
    value: dict[str, float] | None = None,
) -> None:
    """The Lua script of ``scenario``: GET a random known user of ``ids`` each request, or, for
    ``events``, POST one event with a new ``event_id`` (a random user and item of ``items``)
    carrying ``value`` (default ``{"rating": 4}``; implicit data: ``{"weight": 1.0}``)."""
    fields = json.dumps(value or {"rating": 4})[1:-1]  # '"rating": 4'
    events = ""
    if scenario == "events":
        events = EVENTS_LUA % {"items": ",".join(map(str, items)), "value": fields}
    values = {"ids": ",".join(map(str, ids)), "k": k, "model": model, "events": events}
    path.write_text(LUA % values)


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> dict[str, float]:
    threads, duration = min(connections, 2), max(1, round(seconds))
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s"]
    out = subprocess.run(
        [*command, "-s", str(script), url], capture_output=True, text=True, check=True
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    raw = json.loads(line.removeprefix("WRK_JSON "))
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "errors": raw["errors"],
        "requests": raw["requests"],
    }
