"""PostgreSQL backups: encrypted base backups and WAL archive in two S3 buckets."""
