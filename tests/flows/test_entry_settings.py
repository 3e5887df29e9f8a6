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


def test_an_unsupported_backbone_fails_at_config_load_with_one_message(tmp_path):
    """Before any Prefect server or training job starts: exit 2, one `error:` naming the supported families."""
    import yaml

    from tests.flows.conftest import TINY

    config = yaml.safe_load(TINY.read_text())
    config["backbone"]["config"]["model_type"] = "granite"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "flows.pipeline", "--config", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: {path}: invalid PipelineSpec") and done.stderr.count("error:") == 1
    assert "supported `model_type`: one of llama, qwen2, mistral, qwen3, phi3, olmo2, gemma3_text" in done.stderr
    assert "Traceback" not in done.stderr and "temporary server" not in done.stderr
