"""detseg.metrics."""
