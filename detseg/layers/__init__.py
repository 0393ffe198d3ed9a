"""detseg.layers."""
