"""Leader lock plug-ins: implementations of ``agentaskit_dr.ports.LeaderLock``."""

from agentaskit_dr.leadership.redis_lock import RedisLeaderLock

__all__ = ["RedisLeaderLock"]
