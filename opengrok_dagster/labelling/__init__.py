"""Putting the distilled student to work: which adapter earns promotion, and labelling the user's posts with it."""
