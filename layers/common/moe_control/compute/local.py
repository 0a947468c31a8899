"""The `local` compute backend: the workers as processes on this machine, for the embedded local cloud.

Everything it knows lives in files under LOCALCLOUD_STATE_DIR, so that any process (a Lambda worker, the demo,
a test) sees the same clusters, jobs and endpoints:

    clusters/NAME.json      a "cluster" record (always InService once ensured; there are no nodes to manage)
    scratch/RUN_ID/         the staged dataset (manifest.json and its files, copied from S3)
    jobs/RUN_ID.json        the training process: pid, its start time (so a reused pid is not mistaken for it),
    jobs/RUN_ID.log         the command and when it started; the log holds stdout and stderr of every launch
    runs/RUN_ID/            the worker's --output folder (exit_status.json says how the last launch ended)
    endpoints/NAME.json     the inference process: pid, port, url, model

Workers start in their own session (`start_new_session=True`): they must outlive the Lambda worker process
that launched them, and a signal to the process group reaches the worker and anything it started.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import signal as signals
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal

from moe_control.compute.base import (
    BackendConfigError,
    ClusterNotFound,
    ClusterState,
    Endpoint,
    InferenceDeployFailed,
    JobNotFound,
    JobStatus,
    LaunchedJob,
    StagingFailed,
    TrainingAlreadyRunning,
    TrainingJob,
    TrainingLaunchFailed,
    env,
    env_int,
    parse_s3_uri,
)

TRAIN_MODULE = (
    "moe_core.train"  # `python -m moe_core.train` is `moectl train` (what torchrun runs in AWS too)
)
STATUS_FILE = "exit_status.json"  # written by the training worker into --output when it exits


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _age_s(iso: str) -> float:
    return (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(iso)).total_seconds()


def _write_json(path: Path, data: dict) -> None:
    # Write then rename: another process may be reading the record right now.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _proc_start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19]


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def process_alive(pid: int, start_ticks: str | None) -> bool:
    """Whether the recorded process still runs: same pid AND same start time, and not a zombie.

    A zombie is a process that has exited but whose parent (the Lambda worker that launched it) has not
    reaped it yet; we reap it if it is our own child.
    """
    if not Path("/proc").is_dir():  # not Linux: the best we can do
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    ticks = _proc_start_ticks(pid)
    if ticks is None or (start_ticks is not None and ticks != start_ticks):
        return False
    if _proc_state(pid) == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the worker leads its own session, so its group id is its pid
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _redact(cmd: list[str]) -> list[str]:
    """The command as recorded: a task token is a credential for the workflow, so it is not written down."""
    out = list(cmd)
    for i, arg in enumerate(out[:-1]):
        if arg == "--task-token":
            out[i + 1] = "<task-token>"
    return out


class LocalBackend:
    """Processes on this machine; records under LOCALCLOUD_STATE_DIR."""

    name = "local"

    def __init__(self, state_dir: str | Path | None = None):
        self.state_dir = Path(state_dir or env("LOCALCLOUD_STATE_DIR"))
        self.serve_timeout_s = float(os.environ.get("LOCAL_SERVE_START_TIMEOUT", "180"))

    # ------------------------------------------------------------------ paths
    def _cluster_path(self, name: str) -> Path:
        return self.state_dir / "clusters" / f"{name}.json"

    def _job_path(self, run_id: str) -> Path:
        return self.state_dir / "jobs" / f"{run_id}.json"

    def _endpoint_path(self, name: str) -> Path:
        return self.state_dir / "endpoints" / f"{name}.json"

    def run_dir(self, run_id: str) -> Path:
        return self.state_dir / "runs" / run_id

    # ------------------------------------------------------------------ clusters
    def _state(self, rec: dict) -> ClusterState:
        return ClusterState(
            name=rec["name"],
            arn=None,
            status=rec["status"],
            orchestrator=rec.get("orchestrator", "slurm"),
            instance_groups=[
                {
                    "InstanceGroupName": "local",
                    "InstanceType": "local-process",
                    "CurrentCount": rec["instance_count"],
                    "TargetCount": rec["instance_count"],
                }
            ],
        )

    def ensure_cluster(self, name: str) -> ClusterState:
        rec = _read_json(self._cluster_path(name))
        if rec is None:
            orchestrator = os.environ.get("CLUSTER_ORCHESTRATOR", "slurm")
            if orchestrator not in ("slurm", "eks"):
                raise BackendConfigError(f"CLUSTER_ORCHESTRATOR must be slurm or eks, got {orchestrator!r}")
            rec = {
                "name": name,
                "status": "InService",
                "orchestrator": orchestrator,
                "instance_count": env_int("CLUSTER_INSTANCE_COUNT", 1),
                "created_at": _now(),
                "updated_at": _now(),
            }
            _write_json(self._cluster_path(name), rec)
        return self._state(rec)

    def describe_cluster(self, name: str) -> ClusterState:
        rec = _read_json(self._cluster_path(name))
        if rec is None:
            return ClusterState(name=name, status="NotFound")
        return self._state(rec)

    def scale_cluster(self, name: str, count: int) -> ClusterState:
        rec = _read_json(self._cluster_path(name))
        if rec is None:
            raise ClusterNotFound(f"no local cluster {name!r}")
        if count < 0:
            raise BackendConfigError(f"instance count must be >= 0, got {count}")
        rec.update(instance_count=count, updated_at=_now())
        _write_json(self._cluster_path(name), rec)
        return self._state(rec)

    def replace_node(self, name: str, instance_id: str) -> str:
        if _read_json(self._cluster_path(name)) is None:
            raise ClusterNotFound(f"no local cluster {name!r}")
        return (
            f"local backend: cluster {name!r} has no nodes to replace ({instance_id!r} ignored); "
            "the relaunched worker process is the recovery"
        )

    def delete_cluster(self, name: str) -> None:
        self._cluster_path(name).unlink(missing_ok=True)

    def list_idle_clusters(self, idle_minutes: int) -> list[str]:
        idle = []
        for path in sorted((self.state_dir / "clusters").glob("*.json")):
            rec = _read_json(path)
            if rec is None:
                continue
            last = rec["updated_at"]
            busy = False
            for job in self._jobs():
                if job.get("cluster") != rec["name"]:
                    continue
                if self._job_alive(job):
                    busy = True
                    break
                last = max(last, job.get("ended_at") or job["started_at"])
            if not busy and _age_s(last) >= idle_minutes * 60:
                idle.append(rec["name"])
        return idle

    # ------------------------------------------------------------------ data
    def stage_data(self, dataset_uri: str, run_id: str) -> str:
        """Copy the dataset (its manifest and every file it lists) from S3 into scratch/RUN_ID/."""
        from moe_control.aws import client
        from moe_control.datasets import DatasetManifest

        try:
            bucket, key = parse_s3_uri(dataset_uri)
        except ValueError as e:
            raise StagingFailed(str(e)) from None
        prefix = key[: -len("manifest.json")] if key.endswith("manifest.json") else key.rstrip("/") + "/"
        s3 = client("s3")
        dest = self.state_dir / "scratch" / run_id
        try:
            raw = s3.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read()
            manifest = DatasetManifest.model_validate_json(raw)
            dest.mkdir(parents=True, exist_ok=True)
            for f in manifest.files:
                target = dest / f.path
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, prefix + f.path, str(target))
                if target.stat().st_size != f.size:
                    raise StagingFailed(
                        f"{f.path}: {target.stat().st_size} bytes copied, the manifest says {f.size}"
                    )
            (dest / "manifest.json").write_bytes(raw)
        except StagingFailed:
            raise
        except Exception as e:  # S3 errors, a malformed manifest: one named failure with the reason
            raise StagingFailed(f"cannot stage {dataset_uri} into {dest}: {type(e).__name__}: {e}") from None
        return str(dest)

    # ------------------------------------------------------------------ training
    def _jobs(self) -> list[dict]:
        return [r for p in sorted((self.state_dir / "jobs").glob("*.json")) if (r := _read_json(p))]

    def _job_alive(self, rec: dict) -> bool:
        return process_alive(rec["pid"], rec.get("start_ticks"))

    def training_command(self, job: TrainingJob) -> list[str]:
        return [sys.executable, "-m", TRAIN_MODULE, *job.worker_args(output=str(self.run_dir(job.run_id)))]

    def launch_training(self, job: TrainingJob) -> LaunchedJob:
        path = self._job_path(job.run_id)
        previous = _read_json(path)
        if previous is not None and self._job_alive(previous):
            raise TrainingAlreadyRunning(f"run {job.run_id} is still training (pid {previous['pid']})")
        out = self.run_dir(job.run_id)
        out.mkdir(parents=True, exist_ok=True)
        (out / STATUS_FILE).unlink(missing_ok=True)  # the last launch's status must not speak for this one
        cmd = self.training_command(job)
        log_path = path.with_suffix(".log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        environ = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log_path, "ab") as log:
            log.write(f"\n==== {_now()} launch: {shlex.join(_redact(cmd))}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=environ,
                    cwd=str(self.state_dir),
                    start_new_session=True,
                )
            except OSError as e:
                raise TrainingLaunchFailed(f"cannot start the training worker: {e}") from None
        rec = {
            "run_id": job.run_id,
            "pid": proc.pid,
            "start_ticks": _proc_start_ticks(proc.pid),
            "cmd": _redact(cmd),
            "started_at": _now(),
            "ended_at": None,
            "output": str(out),
            "log": str(log_path),
            "cluster": job.cluster_name or os.environ.get("CLUSTER_NAME"),
            "attempt": (previous or {}).get("attempt", 0) + 1,
        }
        _write_json(path, rec)
        return LaunchedJob(
            job_id=job.run_id,
            backend="local",
            details={"pid": proc.pid, "log": str(log_path), "output": str(out), "attempt": rec["attempt"]},
        )

    def job_status(self, job_id: str) -> JobStatus:
        rec = _read_json(self._job_path(job_id))
        if rec is None:
            return "NOT_FOUND"
        if self._job_alive(rec):
            return "RUNNING"
        if rec.get("ended_at") is None:
            rec["ended_at"] = _now()
            _write_json(self._job_path(job_id), rec)
        status = _read_json(Path(rec["output"]) / STATUS_FILE) or {}
        # No status file: the worker was killed before it could write one (SIGKILL, OOM, a lost node).
        return "SUCCEEDED" if status.get("status") == "done" else "FAILED"

    def job_record(self, job_id: str) -> dict[str, Any]:
        rec = _read_json(self._job_path(job_id))
        if rec is None:
            raise JobNotFound(f"no local training job {job_id!r}")
        return rec

    def stop_training(self, job_id: str, signal: Literal["TERM", "KILL"] = "TERM") -> None:
        """TERM: the worker checkpoints the current step and exits 75; KILL: it dies at once."""
        rec = self.job_record(job_id)
        if self._job_alive(rec):
            _signal_group(rec["pid"], signals.SIGKILL if signal == "KILL" else signals.SIGTERM)

    # ------------------------------------------------------------------ inference
    def serve_command(self, model_uri: str, port: int) -> list[str]:
        extra = shlex.split(os.environ.get("LOCAL_SERVE_ARGS", ""))
        return [
            sys.executable, "-m", "moectl.cli", "serve",
            "--model", model_uri, "--port", str(port), "--host", "127.0.0.1", *extra,
        ]  # fmt: skip

    def _healthy(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _start_server(self, model_uri: str, name: str, generation: int) -> dict:
        port = free_port()
        cmd = self.serve_command(model_uri, port)
        log_path = self.state_dir / "endpoints" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"\n==== {_now()} generation {generation}: {shlex.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                cwd=str(self.state_dir),
                start_new_session=True,
            )
        return {
            "endpoint_id": name,
            "pid": proc.pid,
            "start_ticks": _proc_start_ticks(proc.pid),
            "port": port,
            "url": f"http://127.0.0.1:{port}",
            "model_uri": model_uri,
            "generation": generation,
            "started_at": _now(),
            "log": str(log_path),
        }

    def _wait_healthy(self, rec: dict) -> None:
        deadline = time.monotonic() + self.serve_timeout_s
        while not self._healthy(rec["url"]):
            if not process_alive(rec["pid"], rec["start_ticks"]):
                raise InferenceDeployFailed(
                    f"the inference worker for {rec['model_uri']} exited before it was healthy; "
                    f"last lines of {rec['log']}:\n{_tail(Path(rec['log']))}"
                )
            if time.monotonic() > deadline:
                _signal_group(rec["pid"], signals.SIGKILL)
                raise InferenceDeployFailed(
                    f"the inference worker for {rec['model_uri']} was not healthy after "
                    f"{self.serve_timeout_s:.0f} s (LOCAL_SERVE_START_TIMEOUT); see {rec['log']}"
                )
            time.sleep(0.2)

    def deploy_inference(
        self, model_uri: str, endpoint_name: str, placement_uri: str | None = None
    ) -> Endpoint:
        """Blue/green on one machine: start the new worker on a free port, wait until /health answers 200,
        then stop the old one. If the new one never becomes healthy the old one keeps serving.

        `placement_uri` is not used here: the worker reads the expert placement inputs from the artifact's
        routing_stats.json itself.
        """
        path = self._endpoint_path(endpoint_name)
        old = _read_json(path)
        generation = (old or {}).get("generation", 0) + 1
        new = self._start_server(model_uri, endpoint_name, generation)
        self._wait_healthy(new)
        if old is not None:
            new["previous_model_uri"] = old["model_uri"]
        _write_json(path, new)
        if old is not None and process_alive(old["pid"], old.get("start_ticks")):
            _signal_group(old["pid"], signals.SIGTERM)
        return self._endpoint(new, "InService")

    def _endpoint(self, rec: dict, status: str) -> Endpoint:
        return Endpoint(
            endpoint_id=rec["endpoint_id"],
            url=rec["url"],
            model_uri=rec["model_uri"],
            variant=f"generation-{rec['generation']}",
            status=status,
        )

    def stop_inference(self, endpoint_id: str) -> None:
        path = self._endpoint_path(endpoint_id)
        rec = _read_json(path)
        if rec is None:
            return
        if process_alive(rec["pid"], rec.get("start_ticks")):
            _signal_group(rec["pid"], signals.SIGTERM)
            deadline = time.monotonic() + 10
            while process_alive(rec["pid"], rec.get("start_ticks")) and time.monotonic() < deadline:
                time.sleep(0.1)
            if process_alive(rec["pid"], rec.get("start_ticks")):
                _signal_group(rec["pid"], signals.SIGKILL)
        path.unlink(missing_ok=True)

    def endpoint_status(self, endpoint_id: str) -> Endpoint:
        rec = _read_json(self._endpoint_path(endpoint_id))
        if rec is None:
            return Endpoint(endpoint_id=endpoint_id, model_uri="", variant="", status="NotFound")
        if not process_alive(rec["pid"], rec.get("start_ticks")):
            return self._endpoint(rec, "Failed")
        return self._endpoint(rec, "InService" if self._healthy(rec["url"]) else "Updating")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
