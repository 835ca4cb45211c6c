"""agentaskit-dr: cross-region disaster-recovery watchdog."""

__version__ = "0.1.0"
