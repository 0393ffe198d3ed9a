"""detseg.data."""
