"""Training jobs on a HyperPod EKS cluster: a Kubeflow PyTorchJob posted to the EKS API server.

Authentication is what `aws eks get-token` does: a presigned STS GetCallerIdentity URL carrying the header
`x-k8s-aws-id: <cluster name>`, base64url-encoded behind `k8s-aws-v1.`, sent as a bearer token. The job carries
HyperPod's auto-resume annotations and runs only on nodes whose health status is Schedulable; the training
operator sets MASTER_ADDR, WORLD_SIZE and RANK per pod, which the image's entrypoint takes as the torchrun
rendezvous, node count and node rank.

No Kubernetes API server can exist in this repository's tests: they check the rendered manifest and run this
client against a small local HTTP server standing in for the API server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from moe_control.compute.base import JobStatus, TrainingJob, TrainingLaunchFailed

GROUP_PATH = "apis/kubeflow.org/v1"
AUTO_RESUME = "sagemaker.amazonaws.com/enable-job-auto-resume"
MAX_RETRY = "sagemaker.amazonaws.com/job-max-retry-count"
HEALTH_LABEL = "sagemaker.amazonaws.com/node-health-status"


def job_name(run_id: str, now: float | None = None) -> str:
    """A DNS-1123 name, unique per launch (a relaunch of the run is a new PyTorchJob)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")[:40] or "run"
    stamp = hashlib.sha256(f"{run_id}@{now if now is not None else time.time()}".encode()).hexdigest()[:8]
    return f"moe-{slug}-{stamp}"


def render_pytorchjob(
    job: TrainingJob,
    *,
    name: str,
    namespace: str,
    image: str,
    nodes: int,
    gpus_per_node: int,
    output: str,
    instance_type: str | None = None,
    fsx_claim: str | None = "fsx-claim",
    max_retries: int = 3,
    entrypoint: str = "/opt/moe/entrypoint.sh",
) -> dict[str, Any]:
    """The PyTorchJob manifest: one pod per node (Master + Workers), each running torchrun over its GPUs."""
    node_selector = {HEALTH_LABEL: "Schedulable"}
    if instance_type:
        node_selector["node.kubernetes.io/instance-type"] = instance_type
    container = {
        "name": "pytorch",  # the training operator looks for the container of this name
        "image": image,
        "command": ["bash", "-c", f'NODE_RANK="$RANK" NNODES="$WORLD_SIZE" exec {entrypoint} "$@"', "_"],
        "args": job.worker_args(output=output),
        "env": [
            {"name": "NPROC_PER_NODE", "value": str(gpus_per_node)},
            {"name": "RDZV_ID", "value": name},
            {"name": "MOE_RUN_ID", "value": job.run_id},
        ],
        "resources": {
            "limits": {"nvidia.com/gpu": gpus_per_node},
            "requests": {"nvidia.com/gpu": gpus_per_node},
        },
    }
    pod_spec: dict[str, Any] = {"nodeSelector": node_selector, "containers": [container]}
    if fsx_claim:
        container["volumeMounts"] = [{"name": "fsx", "mountPath": "/fsx"}]
        pod_spec["volumes"] = [{"name": "fsx", "persistentVolumeClaim": {"claimName": fsx_claim}}]

    def replica(count: int) -> dict[str, Any]:
        return {"replicas": count, "restartPolicy": "OnFailure", "template": {"spec": pod_spec}}

    specs = {"Master": replica(1)}
    if nodes > 1:
        specs["Worker"] = replica(nodes - 1)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "moe-on-aws", "moe-on-aws/run-id": job.run_id[:63]},
            # HyperPod auto-resume: on a node fault it replaces the node and restarts the job.
            "annotations": {AUTO_RESUME: "true", MAX_RETRY: str(max_retries)},
        },
        "spec": {"pytorchReplicaSpecs": specs},
    }


def map_conditions(status: dict | None) -> JobStatus:
    """A PyTorchJob's status.conditions as RUNNING/SUCCEEDED/FAILED (the newest true condition decides)."""
    for cond in reversed((status or {}).get("conditions") or []):
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Succeeded":
            return "SUCCEEDED"
        if cond.get("type") == "Failed":
            return "FAILED"
        return "RUNNING"
    return "RUNNING"  # no condition yet: just created


def eks_bearer_token(cluster_name: str, region: str | None = None, sts_client: Any = None) -> str:
    """The token `aws eks get-token` prints: a presigned GetCallerIdentity URL bound to the cluster's name."""
    if sts_client is None:
        import boto3

        # A client of its own: the signing hook below must not leak into the shared, cached STS client.
        sts_client = boto3.session.Session().client("sts", region_name=region)

    def add_cluster_header(request: Any, **_: Any) -> None:
        request.headers["x-k8s-aws-id"] = cluster_name

    sts_client.meta.events.register_first("before-sign.sts.GetCallerIdentity", add_cluster_header)
    url = sts_client.generate_presigned_url("get_caller_identity", Params={}, ExpiresIn=60, HttpMethod="GET")
    return "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


class KubernetesError(TrainingLaunchFailed):
    """The Kubernetes API server refused a request."""


class KubernetesApi:
    """Just enough of the Kubernetes REST API for PyTorchJobs (stdlib HTTP)."""

    def __init__(self, server: str, token: Callable[[], str], ca_data: str | None = None):
        self.server = server.rstrip("/")
        self.token = token
        self.context = None
        if server.startswith("https://"):
            self.context = ssl.create_default_context(
                cadata=base64.b64decode(ca_data).decode() if ca_data else None
            )

    @classmethod
    def for_eks_cluster(cls, eks_cluster_arn: str) -> KubernetesApi:
        """The API server of an EKS cluster, from DescribeCluster (endpoint and CA), with a fresh token per call."""
        from moe_control.aws import client

        name = eks_cluster_arn.rsplit("/", 1)[-1]
        region = eks_cluster_arn.split(":")[3] or None
        cluster = client("eks").describe_cluster(name=name)["cluster"]
        return cls(
            cluster["endpoint"],
            token=lambda: eks_bearer_token(name, region),
            ca_data=(cluster.get("certificateAuthority") or {}).get("data"),
        )

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.server}/{path.lstrip('/')}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token()}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=15, context=self.context) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"{}")
            except ValueError:
                return e.code, {}
        except (urllib.error.URLError, OSError) as e:
            raise KubernetesError(f"cannot reach the Kubernetes API server {self.server}: {e}") from None

    def _jobs_path(self, namespace: str, name: str = "") -> str:
        return f"{GROUP_PATH}/namespaces/{namespace}/pytorchjobs" + (f"/{name}" if name else "")

    def create_pytorchjob(self, manifest: dict) -> str:
        ns = manifest["metadata"]["namespace"]
        status, payload = self.request("POST", self._jobs_path(ns), manifest)
        if status >= 300:
            raise KubernetesError(
                f"the API server refused the PyTorchJob (HTTP {status}): {payload.get('message', payload)}"
            )
        return payload.get("metadata", {}).get("name", manifest["metadata"]["name"])

    def pytorchjob_status(self, namespace: str, name: str) -> JobStatus:
        status, payload = self.request("GET", self._jobs_path(namespace, name))
        if status == 404:
            return "NOT_FOUND"
        if status >= 300:
            raise KubernetesError(
                f"cannot read PyTorchJob {namespace}/{name} (HTTP {status}): {payload.get('message')}"
            )
        return map_conditions(payload.get("status"))

    def delete_pytorchjob(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        body: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Foreground",
        }
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        status, payload = self.request("DELETE", self._jobs_path(namespace, name), body)
        if status >= 300 and status != 404:
            raise KubernetesError(
                f"cannot delete PyTorchJob {namespace}/{name} (HTTP {status}): {payload.get('message')}"
            )
