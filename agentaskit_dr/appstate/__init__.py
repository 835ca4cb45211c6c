"""Application-state backups besides PostgreSQL: Redis, config files, Vault (docs/appstate.md)."""
