"""cluster.yaml validates against Ray's own cluster-config schema and keeps ports closed."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]


def load() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_matches_ray_schema():
    from ray.autoscaler._private.util import validate_config

    validate_config(load())  # raises jsonschema.ValidationError on any unknown or bad key


def test_cpu_head_and_autoscaling_gpu_workers():
    config = load()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))  # a CPU instance
    gpu = types["worker_gpu"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))


def test_no_dashboard_or_serve_port_open_to_the_world():
    config = load()
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [r["FromPort"] for r in rules] == [22]
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r["IpRanges"])
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    assert any("pip install -e ." in c for c in config["setup_commands"])


def test_documented_job_submit_runs_on_object_storage_spread_over_nodes():
    """The header's `ray job submit` line parses as a pipeline command: an s3:// storage root and
    training workers spread over the nodes (what the multi-node tests run)."""
    import shlex

    from ray_jobs.pipeline import PipelineConfig
    from towers.launch.cli import parse_config

    lines = (ROOT / "cluster.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "ray job submit" in line)
    command = " ".join(line.lstrip("#").strip().rstrip("\\") for line in lines[start : start + 2])
    args = shlex.split(command.split("python -m ray_jobs.pipeline", 1)[1])
    cfg = parse_config(PipelineConfig, args)
    assert cfg.storage.startswith("s3://") and cfg.placement_strategy == "SPREAD"
    assert cfg.use_gpu and cfg.num_workers == 2
