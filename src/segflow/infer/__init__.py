"""Inference: tiling maths (pure functions), backends, the Predictor (sliding-window prediction)."""
