"""Helpers for composite layers: build sub-layers from a shape so `.keras` files load."""


def build_chain(layers, input_shape):
    """Build each layer on the previous one's output shape; return the final shape."""
    shape = input_shape
    for layer in layers:
        layer.build(shape)
        shape = layer.compute_output_shape(shape)
    return shape


def call_chain(layers, x):
    """Apply layers in order (Keras passes the outer `training` flag down to batch norm)."""
    for layer in layers:
        x = layer(x)
    return x
