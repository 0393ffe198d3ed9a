"""detseg.heads."""
