"""Leader lock plug-ins: the lock (``ports.LeaderLock``) and the cluster record next to it."""

from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.leadership.redis_lock import RedisLeaderLock

__all__ = ["RedisClusterStore", "RedisLeaderLock"]
