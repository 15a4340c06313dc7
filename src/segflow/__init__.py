"""segflow: annotated images to a trained, evaluated, exported and served segmentation model."""
