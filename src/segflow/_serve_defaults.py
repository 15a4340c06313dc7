"""The server's default limits, in one place.

``ServeSettings``, ``segflow.serve()`` and ``segflow serve``'s flags all take them from here.

A plain module (no pydantic, no FastAPI) so the CLI can show them in ``--help`` without importing
the server. What each limit means is documented on :class:`segflow.serve.ServeSettings`.
"""

from __future__ import annotations

#: 20 MiB: a 12-megapixel photo as PNG is 10-20 MB; larger scans should be tiled client-side or
#: the limit raised (``--max-upload-mb``).
MAX_UPLOAD_MB = 20.0
#: 40 megapixels (e.g. 6300 x 6300): the decoded image, its float32 copy and the label map stay
#: under ~1 GB; the header is checked before any pixel is decoded.
MAX_PIXELS = 40_000_000
#: Predictions running at once (each already uses every CPU core of the backend).
MAX_CONCURRENCY = 2
#: Predictions waiting for a free slot.
MAX_QUEUE = 32
#: Seconds a prediction may take, queueing included.
REQUEST_TIMEOUT_S = 60.0
