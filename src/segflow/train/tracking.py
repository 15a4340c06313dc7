"""MLflow tracking: an embedded sqlite store by default, a real server on request.

A server that cannot be reached never stops training: one warning, and the metrics stay in the
run folder (``metrics.csv``, ``history.csv``, ``curves.png``).
"""

from __future__ import annotations

import logging
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segflow.config import TrackingConfig

log = logging.getLogger("segflow.train")

#: Seconds to wait for a tracking server's /health before training without it.
PROBE_TIMEOUT = 3.0


@dataclass
class Tracking:
    """A live MLflow connection for one run (or None when tracking is off/unreachable)."""

    logger: Any  # lightning MLFlowLogger
    uri: str

    @property
    def run_id(self) -> str:
        """The MLflow run id."""
        return str(self.logger.run_id)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Upload a file or folder; failures are logged, never raised."""
        try:
            client = self.logger.experiment
            if path.is_dir():
                client.log_artifacts(self.run_id, str(path), folder)
            else:
                client.log_artifact(self.run_id, str(path), folder)
        except Exception as exc:  # any MLflow/transport failure must not stop training
            log.warning("could not log %s to MLflow (%s)", path.name, exc)

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run."""
        try:
            self.logger.finalize(status="success" if status == "FINISHED" else "failed")
        except Exception as exc:  # see log_artifact
            log.warning("could not close the MLflow run (%s)", exc)


def default_uri(output: Path) -> str:
    """The embedded store: ``sqlite:///<output>/mlflow.db``."""
    return f"sqlite:///{(output / 'mlflow.db').resolve()}"


def reachable(uri: str) -> str | None:
    """None when ``uri`` answers (or is not HTTP), else the reason it does not."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT) as resp:
            if resp.status >= 400:
                return f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def git_sha() -> str | None:
    """The current git commit of the working directory, if it is a repository."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and None as strings)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return out


def start_tracking(
    cfg: TrackingConfig,
    *,
    output: Path,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    run_id: str | None = None,
    uri: str | None = None,
) -> Tracking | None:
    """Open (or re-open, on resume) the MLflow run; None when tracking is off or unreachable."""
    if not cfg.enabled:
        return None
    target = uri or cfg.uri or default_uri(output)
    problem = reachable(target)
    if problem is not None:
        log.warning(
            "MLflow server %s unreachable (%s): training continues without tracking; metrics are "
            "in the run folder",
            target,
            problem,
        )
        return None
    from lightning.pytorch.loggers import MLFlowLogger

    artifacts = None
    if target.startswith("sqlite:"):
        artifacts = (output / "mlartifacts").resolve().as_uri()
    try:
        logger = MLFlowLogger(
            experiment_name=cfg.experiment,
            run_name=run_name,
            tracking_uri=target,
            tags=dict(tags),
            artifact_location=artifacts,
            run_id=run_id,
        )
        if run_id is None:
            logger.log_hyperparams(flatten(params))
    except Exception as exc:  # a broken store or server must not stop training
        log.warning("MLflow tracking at %s failed (%s): training continues without it", target, exc)
        return None
    return Tracking(logger, target)
