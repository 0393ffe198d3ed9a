"""detseg.engine."""
