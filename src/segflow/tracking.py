"""MLflow tracking: an embedded sqlite store by default, a real server on request.

A server that cannot be reached never stops training: one warning, and the metrics stay in the
run folder (``metrics.csv``, ``history.csv``, ``curves.png``). ``segflow eval`` logs its metrics
to the training's MLflow run named in the run folder's ``run.json``.

Shared by train and evaluate, so it sits below both (it imports only :mod:`segflow.config`).
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segflow.config import TrackingConfig

log = logging.getLogger("segflow.train")
#: Evaluation logging keeps the evaluator's logger name.
eval_log = logging.getLogger("segflow.eval")

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


#: MLflow params are cut to this many characters (as Lightning's MLFlowLogger cut them).
PARAM_CHARS = 250


def _new_logger(**kwargs: Any) -> Any:
    """An MLFlowLogger that leaves params to :func:`log_params`.

    Lightning logs the module's hyperparameters itself at every ``fit``; on a resume with a
    changed value MLflow then refuses ("Changing param values is not allowed"). segflow logs the
    resolved config once instead, and a changed value as a new version.
    """
    from lightning.pytorch.loggers import MLFlowLogger

    class ConfigParamsLogger(MLFlowLogger):
        def log_hyperparams(self, params: Any) -> None:
            return  # the resolved config is logged by log_params, versioned on resume

    return ConfigParamsLogger(**kwargs)


def _latest(logged: Mapping[str, str], key: str) -> tuple[str, int]:
    """The current value of ``key`` and its version: ``key``, then ``key.v2``, ``key.v3`` ..."""
    version = 1
    while f"{key}.v{version + 1}" in logged:
        version += 1
    return logged[key if version == 1 else f"{key}.v{version}"], version


def log_params(client: Any, run_id: str, params: Mapping[str, Any], *, resume: bool) -> list[str]:
    """Log the flattened config as params; on resume, a changed value becomes ``KEY.vN``.

    MLflow params cannot change, so ``--resume RUN --set train.epochs=5`` on a run logged with
    ``train.epochs=3`` logs ``train.epochs.v2=5`` and the tags ``segflow.resumes`` (how many
    resumes) and ``segflow.resumeN`` (what changed). Returns the changes as ``KEY: OLD -> NEW``.
    """
    from mlflow.entities import Param, RunTag

    data = client.get_run(run_id).data if resume else None
    logged: Mapping[str, str] = data.params if data is not None else {}
    tags: Mapping[str, str] = data.tags if data is not None else {}
    new: list[Param] = []
    changes: list[str] = []
    for key, value in flatten(params).items():
        text = str(value)[:PARAM_CHARS]
        if key not in logged:
            new.append(Param(key, text))
            continue
        current, version = _latest(logged, key)
        if current != text:
            new.append(Param(f"{key}.v{version + 1}", text))
            changes.append(f"{key}: {current} -> {text}")
    for i in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=new[i : i + 100])
    if resume:
        count = int(tags.get("segflow.resumes", "0")) + 1
        what = "; ".join(changes) or "no config change"
        client.log_batch(
            run_id,
            tags=[RunTag("segflow.resumes", str(count)), RunTag(f"segflow.resume{count}", what)],
        )
        client.update_run(run_id, status="RUNNING")
    return changes


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
    artifacts = None
    if target.startswith("sqlite:"):
        artifacts = (output / "mlartifacts").resolve().as_uri()
    try:
        logger = _new_logger(
            experiment_name=cfg.experiment,
            run_name=run_name,
            tracking_uri=target,
            tags=dict(tags),
            artifact_location=artifacts,
            run_id=run_id,
        )
        changes = log_params(logger.experiment, logger.run_id, params, resume=run_id is not None)
    except Exception as exc:  # a broken store or server must not stop training
        log.warning("MLflow tracking at %s failed (%s): training continues without it", target, exc)
        return None
    for change in changes:
        log.warning("resumed with %s (logged to MLflow as a new param version)", change)
    return Tracking(logger, target)


def run_folder(bundle: Path) -> Path | None:
    """The training run folder holding ``bundle`` (it has ``run.json``), else None."""
    parent = bundle.absolute().parent
    return parent if (parent / "run.json").is_file() else None


def log_to_mlflow(run: Path, metrics: dict[str, float], files: Sequence[Path], folder: str) -> bool:
    """Log metrics and files to the MLflow run named in ``run/run.json``; never raises.

    Returns:
        True when logged; False when the run has no MLflow run or logging failed (one warning).
    """
    try:
        state = json.loads((run / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        eval_log.warning(
            "could not read %s (%s): evaluation not logged to MLflow", run / "run.json", exc
        )
        return False
    run_id, uri = state.get("mlflow_run_id"), state.get("mlflow_uri")
    if not isinstance(run_id, str) or not isinstance(uri, str) or not run_id or not uri:
        return False
    problem = reachable(uri)
    try:
        if problem is not None:
            raise ConnectionError(problem)
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        stamp = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in metrics.items()])
        for path in files:
            client.log_artifact(run_id, str(path), folder)
    except Exception as exc:  # any MLflow/transport failure must not lose the evaluation
        eval_log.warning(
            "could not log the evaluation to MLflow run %s at %s (%s)", run_id, uri, exc
        )
        return False
    return True
