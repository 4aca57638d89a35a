"""Security: loopback binds, Ray token authentication, no unpickling of stored files, no escapes.

* Services bind 127.0.0.1 unless told otherwise: the CLI default, ``serving/config.yaml``, no
  ``0.0.0.0`` in the code, and a ``--no-ray`` server that answers on 127.0.0.1 and refuses the
  machine's other addresses (``tests/integration/test_serving_ray.py::test_binds_loopback_only``
  checks the Serve proxy the same way); ``python -m serving`` with its own local Ray has every
  socket of every Ray process on loopback.
* Ray token authentication stays on: no file of the repository turns it off, and the session's
  Ray cluster refuses a GCS client with a wrong token or none, while the right one is answered.
* Stored files are read without pickle: a scan of the source tree for every unpickling call,
  and pickle payloads planted in a checkpoint, a model export and an index, which are refused
  without running.
* Storage paths and artifact names cannot leave the storage root; HTTP ids never become paths.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import yaml

from serving.schemas import ModelSettings, ServingArgs
from towers.artifacts import publish_small_run
from towers.storage.root import Storage

ROOT = Path(__file__).resolve().parents[3]
SOURCE_DIRS = ("towers", "serving", "ray_jobs", "tuning", "bench")
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve"}
# Calls that unpickle files a user or a run wrote, each allowed here with the reason.
ALLOWED_UNPICKLING = {
    ("tuning/tune.py", "tune.Tuner.restore"): "Ray Tune resumes its own experiment state "
    "(tuning/search/*.pkl) that this run wrote; see docs/RELIABILITY.md",
    (
        "towers/index/scann.py",
        "scann_ops_pybind.load_searcher",
    ): "ScaNN unpickles searcher/scann_docids.pkl if there; "
    "ScaNNIndex refuses a folder that has one (test_planted_pickles_are_refused...)",
}


def source_files() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py"))


def _name(node: ast.AST) -> str:
    """``np.load`` for ``np.load(...)``'s function, ``''`` when it is not a plain dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expression>"
    return "<absent>"


def unsafe_loads(code: str, rel: str) -> list[tuple[str, int, str]]:
    """``(file, line, call)`` of every call in ``code`` that could unpickle what it reads."""
    found = []
    for node in ast.walk(ast.parse(code, filename=rel)):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        head, _, last = name.rpartition(".")
        bad = (
            (head in PICKLE_MODULES and last in {"load", "loads", "Unpickler", "open"})
            or (name == "torch.load" and _keyword(node, "weights_only") is not True)
            or (last == "load" and head in {"np", "numpy"} and
                _keyword(node, "allow_pickle") not in (False, "<absent>"))
            or last in {"read_pickle", "unsafe_load", "full_load"}
            or (name == "yaml.load" and _keyword(node, "Loader") == "<absent>")
            or name.endswith("Tuner.restore")
            or last == "load_searcher"  # ScaNN unpickles scann_docids.pkl if present
        )  # fmt: skip
        if bad:
            found.append((rel, node.lineno, name))
    return found


def test_no_stored_file_is_unpickled():
    """The source tree has no unpickling call beyond the listed, explained ones."""
    import inspect

    # np.load without allow_pickle is safe only because NumPy's default is False.
    assert inspect.signature(np.load).parameters["allow_pickle"].default is False
    found = [
        f
        for p in source_files()
        for f in unsafe_loads(p.read_text(), p.relative_to(ROOT).as_posix())
    ]
    unexplained = [f for f in found if (f[0], f[2]) not in ALLOWED_UNPICKLING]
    assert not unexplained, unexplained
    assert {(f[0], f[2]) for f in found} == set(ALLOWED_UNPICKLING)  # the list is current
    # The scan finds each kind of call (it would pass vacuously otherwise).
    probe = (
        "import pickle, torch, numpy as np\npickle.load(f)\ntorch.load(p)\n"
        "torch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
        "torch.load(p, weights_only=True)\nnp.load(p)\nnp.load(p, allow_pickle=False)\n"
        "pd.read_pickle(p)\nyaml.load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
    )
    assert [line for _, line, _ in unsafe_loads(probe, "probe.py")] == [2, 3, 4, 5, 9, 10]


class Payload:
    """Unpickling this creates ``marker``: the proof that a loader ran a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return builtins.open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def served_run(tiny_storage, tmp_path_factory) -> Storage:
    """A storage root with ``data/`` and a published model, index and UserKNN."""
    storage = Storage(tmp_path_factory.mktemp("security-run"))
    shutil.copytree(tiny_storage.path("data"), storage.path("data"))
    publish_small_run(storage, epochs=1, embedding_dim=8, seed=0)
    return storage


def test_planted_pickles_are_refused_without_running(served_run, tmp_path):
    import pickle

    import torch

    from towers.index import ItemIndex
    from towers.recommenders.two_tower import TwoTowerRecommender
    from towers.training.checkpoint import STATE_FILE, load_checkpoint

    marker = tmp_path / "pwned"
    blob = pickle.dumps(Payload(marker))
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    torch.save({"model": Payload(marker)}, checkpoint / STATE_FILE)
    (checkpoint / "config.json").write_text('{"model_config": {}, "loop": {}}')
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(checkpoint)

    model = tmp_path / "model"
    shutil.copytree(served_run.path("model"), model)
    (model / "weights.safetensors").write_bytes(blob)
    with pytest.raises(Exception, match="(?i)header|safetensor"):
        TwoTowerRecommender.load(model)
    shutil.copy(served_run.path("model", "weights.safetensors"), model)
    np.savez(model / "features.npz", user=np.array([Payload(marker)], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        TwoTowerRecommender.load(model)

    index = tmp_path / "index"
    shutil.copytree(served_run.path("index"), index)
    ItemIndex.load(index)  # loads as published (the check below is not about the manifest)
    (index / "searcher" / "scann_docids.pkl").write_bytes(blob)
    with pytest.raises(Exception, match="scann_docids.pkl"):
        ItemIndex.load(index)
    assert not marker.exists()


def test_storage_and_artifact_names_cannot_escape_the_root(tmp_path):
    storage = Storage(tmp_path / "root")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "manifest.json").write_text("{}")
    for name in ("..", "../outside", "a/../../outside", "/etc/passwd", f"{tmp_path}/outside",
                 "./../outside", "a\x00b"):  # fmt: skip
        for call in (storage.path, storage.exists, storage.read_bytes, storage.read_manifest,
                     storage.begin_artifact):  # fmt: skip
            with pytest.raises(ValueError, match="escapes the storage root"):
                call(name)
        with pytest.raises(ValueError, match="escapes"), storage.checked_copy(name):
            pass
    via_uri = Storage(f"file://{tmp_path}/uri-root")
    with pytest.raises(ValueError, match="escapes the storage root"):
        via_uri.read_bytes("../outside/manifest.json")
    assert storage.path("model/../data") == f"{storage.root}/data"  # inside: fine
    for name in ("..", ".", "", "../model", "a/b", "a\\b", "/model", "mo\x00del"):
        with pytest.raises(ValueError, match="plain folder name"):
            ModelSettings(model_artifact=name)
        with pytest.raises(ValueError, match="plain folder name"):
            ServingArgs(storage=str(tmp_path), index_artifact=name)


def test_http_ids_never_become_paths(served_run):
    from fastapi.testclient import TestClient

    from serving.artifacts import load_services
    from serving.http import LocalBackend, create_app

    app = create_app(LocalBackend(load_services(served_run.uri)))
    client = TestClient(app, raise_server_exceptions=False)
    tricks = [
        "/recommend/..%2F..%2F..%2Fetc%2Fpasswd",
        "/similar/..%2f..%2fetc%2fpasswd",
        "/recommend/%2Fetc%2Fpasswd",
        "/similar/%00",
        "/recommend/1?model=..%2Fknn",
    ]
    for path in tricks:
        response = client.get(path)
        assert response.status_code in (404, 422), (path, response.text)
        assert "root:" not in response.text


def non_loopback_addresses() -> set[str]:
    infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    return {a[4][0] for a in infos} - {"127.0.0.1"}


@pytest.mark.slow
def test_services_bind_loopback_by_default(served_run):
    from serving.__main__ import parse_args

    ns, _ = parse_args(["--storage", served_run.uri])
    assert ns.host == "127.0.0.1"
    config = yaml.safe_load((ROOT / "serving" / "config.yaml").read_text())
    assert config["http_options"]["host"] == "127.0.0.1"
    for path in source_files():  # no wildcard bind in code (comments and tests aside)
        code = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)]
        assert not [n.lineno for n in code if n.value == "0.0.0.0"], path

    listening, port = serve_and_list_sockets(["--no-ray", "--storage", served_run.uri], 60)
    assert {(ip, p) for _, ip, p in listening} == {("127.0.0.1", port)}, listening


LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def serve_and_list_sockets(
    args: list[str], timeout: float, answered: bool = False
) -> tuple[set[tuple[str, str, int]], int]:
    """Starts ``python -m serving ARGS --port P``, waits for ``/healthz``, and returns the
    listening ``(process name, address, port)`` of it and its descendants, after checking that
    P refuses connections on the machine's other addresses (and, if ``answered``, that a
    recommendation from each model crossed the deployments' handles). The server is stopped
    (SIGTERM, as Ctrl-C) either way."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", *args, "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    pytest.fail(f"the server exited {proc.returncode}:\n{proc.stderr.read()}")
                assert time.monotonic() < deadline, f"the server did not answer in {timeout} s"
            time.sleep(0.2)
        for model in ("two_tower", "user_knn") if answered else ():
            reply = httpx.get(f"http://127.0.0.1:{port}/recommend/1?k=3&model={model}", timeout=30)
            assert reply.status_code == 200 and len(reply.json()["items"]) == 3, reply.text
        listening = set()
        for process in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]:
            try:
                connections = process.net_connections("inet")
            except psutil.NoSuchProcess:  # a worker that exited meanwhile
                continue
            name = process.name()
            listening |= {(name, *c.laddr) for c in connections if c.status == "LISTEN"}
        for address in non_loopback_addresses():
            with pytest.raises(OSError), socket.create_connection((address, port), timeout=2):
                pass
        return listening, port
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


AUTH_OFF = re.compile(r"""RAY_AUTH_MODE["'\]]*\s*[:=,]\s*["']?(\w+)""")


def repository_files() -> list[Path]:
    """The repository's own files: tracked or new, not ignored (no venv, no build output)."""
    try:
        names = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        return [ROOT / n for n in names if (ROOT / n).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk it
        skip = {".venv", ".git", "runs", "__pycache__", ".cache", ".ruff_cache", "build"}
        files = []
        for folder, subfolders, names in os.walk(ROOT):
            subfolders[:] = [d for d in subfolders if d not in skip and "egg-info" not in d]
            files += [Path(folder) / n for n in names]
        return files


def test_no_file_turns_ray_token_authentication_off():
    this = Path(__file__).resolve()
    text = {".py", ".yaml", ".yml", ".toml", ".md", ".sh", ".cfg", ".ini", ".json", ""}
    files = [p for p in repository_files() if p.suffix in text and p.resolve() != this]
    modes = {
        (p.relative_to(ROOT).as_posix(), m.group(1))
        for p in files
        for m in AUTH_OFF.finditer(p.read_text(errors="ignore"))
    }
    assert modes and {mode for _, mode in modes} == {"token"}, modes
    assert AUTH_OFF.search('env = {"RAY_AUTH_MODE": "disabled"}').group(1) == "disabled"


@pytest.mark.ray
def test_session_cluster_refuses_clients_without_the_token(ray_session):
    """A GCS client with a wrong token, or none, is refused; the right token is answered."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    assert is_token_auth_enabled()
    gcs = ray_session.get_runtime_context().gcs_address
    probe = (
        "from ray._raylet import GcsClient\n"
        "try:\n"
        f"    GcsClient(address={gcs!r}).internal_kv_keys(b'', None, timeout=10)\n"
        "    print('ANSWERED')\n"
        "except Exception as err:\n"
        "    print('REFUSED', type(err).__name__, err)\n"
    )
    clients = {
        "wrong token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32},
        "no token": {"RAY_AUTH_MODE": "disabled"},  # this client sends none: must be refused
        "cluster token": {},
    }
    answers = {}
    for name, env in clients.items():
        out = subprocess.run(
            [sys.executable, "-c", probe],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        answers[name] = out.stdout.strip()
    assert answers["cluster token"] == "ANSWERED", answers
    for name in ("wrong token", "no token"):
        assert answers[name].startswith("REFUSED AuthenticationError"), answers
        assert "InvalidAuthToken" in answers[name], answers
