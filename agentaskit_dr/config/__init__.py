"""Configuration: the watchdog's and the backup jobs' YAML files, validated.

``load_config`` / ``load_backup_config`` return frozen pydantic models or raise
:class:`ConfigError` (never anything else) with one readable line per problem.
Secrets (``*_env`` / ``*_file``) are read at load time and never printed.
See ``docs/configuration.md`` for every key.
"""

from agentaskit_dr.config._backup import (
    ApplicationStateConfig,
    BackupConfig,
    Bucket,
    PostgresBackupConfig,
    RestoreTestConfig,
    ScheduledBackup,
    StateBackup,
    StorageConfig,
    VerificationConfig,
    VerifyBackupConfig,
    WalArchiving,
)
from agentaskit_dr.config._backup_keys import EncryptionConfig, PreviousKey
from agentaskit_dr.config._backup_source import PostgresSource, RestoreTarget
from agentaskit_dr.config._binding import (
    STALL_INTERVALS,
    BindingBudget,
    BindingConfig,
    binding_budget,
)
from agentaskit_dr.config._connections import DatabaseConfig, LockConfig
from agentaskit_dr.config._control import DatabaseControlConfig
from agentaskit_dr.config._drills import (
    DrillsConfig,
    ExerciseConfig,
    FailoverDrillConfig,
    ObjectivesConfig,
    S3ObjectsBackup,
)
from agentaskit_dr.config._failback import FailbackConfig
from agentaskit_dr.config._jobs import BackupJobsConfig
from agentaskit_dr.config._layout import EvidenceLayout
from agentaskit_dr.config._loader import (
    ConfigError,
    load_backup_config,
    load_config,
    looks_like_backup,
)
from agentaskit_dr.config._models import (
    LoggingConfig,
    ProbeConfig,
    PromotionConfig,
    RegionConfig,
    ThresholdsConfig,
    WatchdogConfig,
)
from agentaskit_dr.config._sections import ApiConfig, ApiTlsConfig, PeerTlsConfig
from agentaskit_dr.config._vantage import PeerClientTls, TlsFile
from agentaskit_dr.durations import format_duration, parse_duration, parse_size
from agentaskit_dr.redaction import redact, redact_url

__all__ = [
    "STALL_INTERVALS",
    "ApiConfig",
    "ApiTlsConfig",
    "ApplicationStateConfig",
    "BackupConfig",
    "BackupJobsConfig",
    "BindingBudget",
    "BindingConfig",
    "Bucket",
    "ConfigError",
    "DatabaseConfig",
    "DatabaseControlConfig",
    "DrillsConfig",
    "EncryptionConfig",
    "EvidenceLayout",
    "ExerciseConfig",
    "FailbackConfig",
    "FailoverDrillConfig",
    "LockConfig",
    "LoggingConfig",
    "ObjectivesConfig",
    "PeerClientTls",
    "PeerTlsConfig",
    "PostgresBackupConfig",
    "PostgresSource",
    "PreviousKey",
    "ProbeConfig",
    "PromotionConfig",
    "RegionConfig",
    "RestoreTarget",
    "RestoreTestConfig",
    "S3ObjectsBackup",
    "ScheduledBackup",
    "StateBackup",
    "StorageConfig",
    "ThresholdsConfig",
    "TlsFile",
    "VerificationConfig",
    "VerifyBackupConfig",
    "WalArchiving",
    "WatchdogConfig",
    "binding_budget",
    "format_duration",
    "load_backup_config",
    "load_config",
    "looks_like_backup",
    "parse_duration",
    "parse_size",
    "redact",
    "redact_url",
]
