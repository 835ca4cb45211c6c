"""Throwaway real servers (a PostgreSQL primary + replica, Redis) for tests and the drill."""
