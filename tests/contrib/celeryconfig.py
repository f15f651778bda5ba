"""Celery settings for the worker tests: a broker and results in files.

kombu's filesystem transport lets a worker process and the test share a queue
without a broker server; ``CELERY_TEST_DIR`` names the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

_folder = Path(os.environ["CELERY_TEST_DIR"])
for _name in ("queue", "processed", "results", "control"):
    (_folder / _name).mkdir(parents=True, exist_ok=True)

broker_url = "filesystem://"
# Messages written whole before a poller can take them (see celery_broker.py).
broker_transport = "tests.contrib.celery_broker:Transport"
broker_transport_options = {
    "data_folder_in": str(_folder / "queue"),
    "data_folder_out": str(_folder / "queue"),
    "processed_folder": str(_folder / "processed"),
    "control_folder": str(_folder / "control"),
    "store_processed": False,
    "polling_interval": 0.05,
}
result_backend = "file://" + str(_folder / "results")
broker_connection_retry_on_startup = True
worker_prefetch_multiplier = 1
