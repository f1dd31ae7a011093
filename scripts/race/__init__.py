"""The parts of the race (scripts/reproductions/race.py, issue 27): its tasks, its entries (one per rule
of the registry) and the papers' claims its numbers decide."""
