"""PostgreSQL backups: encryption, the two-bucket store, the WAL archive (docs/backups.md).

Submodules are imported on demand: ``wal-push`` must start without loading the AWS SDK.
"""
