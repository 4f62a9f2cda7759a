"""The systemd units in deploy/ are valid and start what this checkout has."""

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IN_CI

BACKEND = Path(__file__).resolve().parents[1]
UNITS = sorted((BACKEND.parent / "deploy" / "systemd").glob("*.service"))


def test_systemd_units_verify_against_this_checkout(tmp_path):
    """Installed under /opt/herald/backend; here that path is this checkout, so every ExecStart must
    name a file that exists and is executable."""
    if not shutil.which("systemd-analyze"):
        if IN_CI:
            pytest.fail("CI=true and no systemd-analyze (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed")
    assert {unit.name for unit in UNITS} >= {"herald-api.service", "herald-worker.service"}
    for unit in UNITS:
        text = unit.read_text().replace("/opt/herald/backend", str(BACKEND))
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_and_supervisor_run_uvicorn_with_the_options_the_tests_use():
    from src.devserver.processes import UVICORN_LIMITS, UVICORN_PROXY

    unit = (BACKEND.parent / "deploy" / "systemd" / "herald-api.service").read_text()
    exec_start = unit.split("\nExecStart=", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ").split("\n")[0]
    assert set(UVICORN_LIMITS + UVICORN_PROXY) <= set(exec_start.split())
    supervisor = (BACKEND.parent / "deploy" / "supervisor" / "herald.conf").read_text()
    command = supervisor.split("[program:herald-api]", 1)[1].split("\ncommand=", 1)[1].split("\n", 1)[0]
    assert set(UVICORN_LIMITS + UVICORN_PROXY) <= set(command.strip('"').split())
