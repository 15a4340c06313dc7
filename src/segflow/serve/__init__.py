"""HTTP serving: ``create_app(predictor) -> FastAPI``, its settings, and ``segflow serve``.

Importing this package imports FastAPI; the CLI imports it only inside ``segflow serve``.
"""

from segflow.serve.app import create_app
from segflow.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
