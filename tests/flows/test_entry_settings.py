"""The flows' entry points work without the Makefile's variables."""

import subprocess
import sys


def _startup_timeout(env: dict[str, str]) -> str:
    script = ("import flows.pipeline\n"
              "from prefect.settings import get_current_settings\n"
              "print(get_current_settings().server.ephemeral.startup_timeout_seconds)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def test_the_ephemeral_server_gets_time_to_start_unless_the_user_says_otherwise():
    import os

    base = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    assert _startup_timeout(base) == "90"
    assert _startup_timeout({**base, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "33"}) == "33"
