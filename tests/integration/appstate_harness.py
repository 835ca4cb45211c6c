"""A backup config for the application-state tests: the moto buckets, a key, and the
``application_state`` section each test gives."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from agentaskit_dr.config import BackupConfig, load_backup_config
from tests.integration.s3_buckets import PRIMARY, REPLICA

KEY_ENV = "AGENTASKIT_DR_TEST_APPSTATE_KEY"
KEY_HEX = "3c" * 32


def write_config(directory: Path, endpoint_url: str, application_state: dict[str, Any],
                 **extra: Any) -> Path:
    """``backup.yaml`` in ``directory``; the key is put in the environment."""
    os.environ[KEY_ENV] = KEY_HEX
    path = directory / "backup.yaml"
    path.write_text(yaml.safe_dump({
        "storage": {
            "primary": {"url": f"s3://{PRIMARY}", "region": "us-west-2"},
            "replica": {"url": f"s3://{REPLICA}", "region": "us-east-1"},
            "endpoint_url": endpoint_url,
        },
        "encryption": {"key_env": KEY_ENV},
        "application_state": application_state,
        **extra,
    }))
    return path


def load(directory: Path, endpoint_url: str, application_state: dict[str, Any]
         ) -> tuple[Path, BackupConfig]:
    path = write_config(directory, endpoint_url, application_state)
    return path, load_backup_config(path)
