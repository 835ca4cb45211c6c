"""Server processes this machine runs itself: the OS user PostgreSQL binaries run as, a
scratch PostgreSQL server (the restore test), the ``redis-server`` binary, free loopback
ports. Product code and the sandbox share them; the sandbox (the drill's test world)
builds on them, never the other way round."""
