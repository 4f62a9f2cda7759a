"""`make soak`, shortened: Herald under load with one fault of each kind must lose and repeat nothing.

The soak starts its own PostgreSQL, Redis, SMTP sink, API processes and workers, so this test needs
none of the suite's services, only their binaries; with CI=true it fails instead of skipping without them.
Throughput is not asserted: it depends on the machine, and this one is shared with the rest of the suite.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.soak import KINDS
from src.devserver.postgres_server import postgres_bin_dir
from src.devserver.redis_server import redis_server_binary
from tests.conftest import IN_CI

SOAK = ["--duration", "90", "--rate", "10", "--fault-min", "10", "--fault-max", "14"]


@pytest.mark.timeout(400)
def test_soak_with_every_fault_loses_and_repeats_nothing():
    try:
        postgres_bin_dir(), redis_server_binary()
    except RuntimeError as exc:
        if IN_CI:
            pytest.fail(f"CI=true and the soak cannot run: {exc}")
        pytest.skip(f"the soak cannot run: {exc}")
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.soak", *SOAK],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=360)
    except subprocess.TimeoutExpired:
        process.terminate()  # SIGTERM: the soak stops everything it started
        output, _ = process.communicate(timeout=60)
        pytest.fail(f"the soak did not finish in 6 minutes; its output:\n{output}")
    assert process.returncode == 0, f"the soak itself failed; its output:\n{output}"
    result = json.loads(output.strip().splitlines()[-1])

    def below(key: str, limit: float) -> bool:
        return result[key] is not None and result[key] < limit

    targets = {
        "emails_lost == 0": result["emails_lost"] == 0,
        "email_duplicates <= worker_kills": result["email_duplicates"] <= result["worker_kills"],
        "notification_gaps == 0": result["notification_gaps"] == 0,
        "notification_duplicates == 0": result["notification_duplicates"] == 0,
        "faults >= 6, of every kind": result["faults"] >= 6 and set(result["fault_kinds"]) == set(KINDS),
        "longest_unresponsive_s <= longest_fault_s + 5": (
            result["longest_unresponsive_s"] <= result["longest_fault_s"] + 5
        ),
        "p99_ms_outside_faults < 1000": below("p99_ms_outside_faults", 1000),
        "notification_p99_delay_s < 5": below("notification_p99_delay_s", 5),
    }
    missed = [target for target, met in targets.items() if not met]
    assert not missed, f"missed: {', '.join(missed)}; the soak's output:\n{output}"
