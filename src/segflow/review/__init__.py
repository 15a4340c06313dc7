"""Label review: rank labelled images by label quality (and unlabelled ones by uncertainty).

:mod:`segflow.review.scoring` holds the pure scores (self-confidence pooled by a soft minimum,
Lad & Mueller 2023) and the error kinds; :mod:`segflow.review.runner` applies them to a dataset;
:mod:`segflow.review.gallery` draws the paginated HTML gallery.
"""
