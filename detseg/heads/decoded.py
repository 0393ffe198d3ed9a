"""`DecodedPredictions`: the `predict_step` every head shares, so `Model.predict()` returns a
head's decoded outputs (detections, class maps, ...) rather than its raw logits."""

from __future__ import annotations

__all__ = ["DecodedPredictions"]


class DecodedPredictions:
    """Mixin for a `keras.Model` with a `postprocess(raw_outputs)` method: `predict_step`
    runs the backend's forward step, then `postprocess`. Put it before `keras.Model` in the
    bases. JAX's stateless step returns `(outputs, non-trainable variables)`: the pair is kept."""

    def predict_step(self, *args):
        outputs = super().predict_step(*args)
        if isinstance(outputs, tuple):  # JAX: (outputs, non-trainable variables)
            return self.postprocess(outputs[0]), outputs[1]
        return self.postprocess(outputs)
