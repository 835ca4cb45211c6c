"""The only layer that owns tasks, time and effects: scheduler, engine, executor, leadership."""
