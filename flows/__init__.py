"""Prefect flows of the ccoe pipeline (thin shells over `ccoe.pipeline`).

Settings the flows need are set here, before Prefect is imported, unless the user set them: on a
loaded 2-core machine the ephemeral API server (started on the first client call when no
PREFECT_API_URL is set) takes longer than Prefect's default 20 s to come up, so `python -m
flows.pipeline` failed with "Timed out while attempting to connect to ephemeral Prefect API server"
unless run through the Makefile.
"""

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
