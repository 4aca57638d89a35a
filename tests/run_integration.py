"""``make test``'s integration tests in two pytest processes at once: the modules marked
``own_cluster`` (each starts Ray clusters of its own, ``ray start`` on free ports and its own
temp dirs) beside all the others (which share one session Ray and Serve), so that one side's Ray
start-ups, job polling and waits overlap the other's work.

    python -m tests.run_integration [PYTEST_ARGS ...]

The others' output is shown as it comes, the own-cluster modules' in full once both have ended.
Exits with the first failure's status; pytest's 5 (no test selected) counts as a pass while the
other side ran tests, since ``-k`` or a path may select from one side only.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

NO_TESTS = 5  # pytest.ExitCode.NO_TESTS_COLLECTED


def wait(process: subprocess.Popen) -> int:
    """The exit status of ``process``, waiting through Ctrl-C: it got the same SIGINT (one
    process group) and tears its Ray clusters down before it exits."""
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue


def exit_status(codes: list[int]) -> int:
    failed = [c for c in codes if c not in (0, NO_TESTS)]
    if failed:
        return failed[0]
    return NO_TESTS if all(c == NO_TESTS for c in codes) else 0


def main(args: list[str]) -> int:
    pytest = [sys.executable, "-m", "pytest", "tests/integration", *args]
    with tempfile.TemporaryFile("w+") as log:
        own = subprocess.Popen(
            [*pytest, "--own-clusters=only"], stdout=log, stderr=subprocess.STDOUT, text=True
        )
        try:
            rest = wait(subprocess.Popen([*pytest, "--own-clusters=skip"]))
        finally:
            own_status = wait(own)
            log.seek(0)
            print("\n==== the own_cluster modules, run beside the above ====", flush=True)
            sys.stdout.write(log.read())
    return exit_status([rest, own_status])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
