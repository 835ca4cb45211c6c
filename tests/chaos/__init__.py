"""The randomized fault campaign (issue 13): a world, a fault catalog, a seeded schedule,
and a checker that reads the whole recorded history."""
