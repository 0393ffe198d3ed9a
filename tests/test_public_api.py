"""The public names of `detseg` resolve, and importing the package does not start Keras."""

from __future__ import annotations

import subprocess
import sys

import detseg


def test_every_public_name_resolves():
    for name in detseg.__all__:
        assert getattr(detseg, name) is not None, name


def test_import_is_light():
    code = "import sys, detseg; print('keras' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_viz_reexports_feature_maps():
    from detseg import feature_maps, viz

    assert viz.feature_maps is feature_maps.feature_maps
