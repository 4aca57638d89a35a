"""An S3-compatible server for the tests: moto's standalone server (``moto[server]``, a dev
dependency) on a free loopback port, in its own process, reached through pyarrow's S3 client.

Storage finds it through the standard AWS variables, as a user's cluster finds its object store:
``AWS_ENDPOINT_URL`` (pyarrow's ``FileSystem.from_uri`` reads it from pyarrow 16 on; the
``S3FileSystem(...)`` constructor does not), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
``AWS_REGION``. ``AWS_EC2_METADATA_DISABLED`` stops the AWS SDK probing for an EC2 metadata
service that a laptop or CI machine does not have.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

MOTO_SERVER = str(Path(sys.executable).with_name("moto_server"))


_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before in this process (the kernel may
    return a just-closed port twice, and a Ray node refuses two components on one port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


@dataclass
class S3Server:
    """A running moto server: its endpoint and the environment that points clients at it."""

    endpoint: str
    env: dict[str, str]
    process: subprocess.Popen

    def new_bucket(self, prefix: str = "run") -> str:
        """Creates an empty bucket with a unique name; returns its name."""
        import pyarrow.fs as pafs

        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            access_key=self.env["AWS_ACCESS_KEY_ID"],
            secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region=self.env["AWS_REGION"],
            allow_bucket_creation=True,
        ).create_dir(name)
        return name


def start_s3_server(log: Path, timeout_s: float = 60) -> S3Server:
    """Starts ``moto_server`` on 127.0.0.1 and waits until it accepts connections."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError as err:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from err
            time.sleep(0.2)
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return S3Server(endpoint, env, process)


def stop_s3_server(server: S3Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def environ_with(values: dict[str, str]) -> dict[str, str | None]:
    """Sets ``values`` in ``os.environ``; returns what they replaced (for ``restore_environ``)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    return saved


def restore_environ(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
