"""Inference: tiling maths (pure functions), sliding-window prediction, the Predictor."""
