"""detseg.backbones."""
