"""The plan's DR testing schedule, the full DR exercise, and the objectives measured."""
