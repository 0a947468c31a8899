"""The `hyperpod` compute backend: SageMaker HyperPod clusters in AWS, for training; SageMaker endpoints for serving.

Clusters are created with deep health checks on the GPU group (InstanceStress, InstanceConnectivity) and
automatic node recovery, orchestrated by Slurm (a controller group + the GPU group) or by an existing EKS
cluster. Jobs go to Slurm through slurmrestd (`slurm.py`), to EKS as a PyTorchJob (`eks.py`); datasets are
staged into FSx for Lustre (`fsx.py`); models are served by a SageMaker real-time endpoint (`fleet.py`).

Every setting comes from the environment (template.yaml sets it); see docs/compute.md for the list.
A cluster made by this backend carries tags: `moe-on-aws:managed`, and `moe-on-aws:active-job` /
`moe-on-aws:last-activity`, which is how `list_idle_clusters` knows how long a cluster has had no work.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any, Literal

from moe_control.compute.base import (
    BackendConfigError,
    ClusterNotFound,
    ClusterNotReady,
    ClusterState,
    Endpoint,
    JobNotFound,
    JobStatus,
    LaunchedJob,
    NodeReplaceFailed,
    StagingFailed,
    StagingInProgress,
    TrainingJob,
    env,
    env_int,
    env_list,
)

MANAGED_TAG = "moe-on-aws:managed"
ACTIVE_JOB_TAG = "moe-on-aws:active-job"
LAST_ACTIVITY_TAG = "moe-on-aws:last-activity"
CONTROLLER_GROUP = "controller-machine"
DEEP_HEALTH_CHECKS = ["InstanceStress", "InstanceConnectivity"]
# What UpdateCluster takes back of a group that DescribeCluster returned (the rest is status).
_GROUP_SPEC_KEYS = (
    "InstanceGroupName", "InstanceType", "LifeCycleConfig", "ExecutionRole", "ThreadsPerCore",
    "InstanceStorageConfigs", "OnStartDeepHealthChecks", "OverrideVpcConfig", "TrainingPlanArn",
)  # fmt: skip
_NOT_FOUND_CODES = ("ResourceNotFound", "ValidationException")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class HyperPodBackend:
    name = "hyperpod"

    def __init__(
        self,
        sagemaker: Any = None,
        fsx: Any = None,
        ssm: Any = None,
        slurm: Any = None,
        kube: Any = None,
    ):
        from moe_control.aws import client

        self.sm = sagemaker or client("sagemaker")
        self._fsx = fsx
        self._ssm = ssm
        self._slurm = slurm  # a SlurmRestClient; made from the environment on first use
        self._kube = kube  # a KubernetesApi; made from EKS_CLUSTER_ARN on first use
        self._client = client

    # ------------------------------------------------------------------ settings
    @property
    def worker_group(self) -> str:
        return os.environ.get("CLUSTER_WORKER_GROUP", "worker-group-1")

    @staticmethod
    def orchestrator_setting() -> Literal["slurm", "eks"]:
        value = os.environ.get("CLUSTER_ORCHESTRATOR", "slurm")
        if value not in ("slurm", "eks"):
            raise BackendConfigError(f"CLUSTER_ORCHESTRATOR must be slurm or eks, got {value!r}")
        return value  # type: ignore[return-value]

    @property
    def fsx_mount(self) -> str:
        return os.environ.get("FSX_MOUNT_PATH", "/fsx").rstrip("/")

    def run_output(self, run_id: str) -> str:
        return f"{os.environ.get('RUN_OUTPUT_ROOT', self.fsx_mount + '/runs').rstrip('/')}/{run_id}"

    # ------------------------------------------------------------------ clusters
    def create_cluster_request(self, name: str) -> dict[str, Any]:
        """CreateCluster's parameters, from the environment."""
        orchestrator = self.orchestrator_setting()
        role = env("CLUSTER_EXECUTION_ROLE_ARN")
        lifecycle = {
            "SourceS3Uri": env("CLUSTER_LIFECYCLE_S3_URI"),
            "OnCreate": os.environ.get("CLUSTER_LIFECYCLE_ON_CREATE", "on_create.sh"),
        }
        storage = []
        if (ebs_gb := env_int("CLUSTER_EBS_VOLUME_GB", 0)) > 0:
            storage.append({"EbsVolumeConfig": {"VolumeSizeInGB": ebs_gb}})
        gpu_group: dict[str, Any] = {
            "InstanceGroupName": self.worker_group,
            "InstanceType": os.environ.get("CLUSTER_INSTANCE_TYPE", "ml.p5en.48xlarge"),
            "InstanceCount": env_int("CLUSTER_INSTANCE_COUNT", 2),
            "LifeCycleConfig": lifecycle,
            "ExecutionRole": role,
            "ThreadsPerCore": env_int("CLUSTER_THREADS_PER_CORE", 1),
            # Stress and connectivity (NCCL/EFA) checks on every GPU node before it takes work.
            "OnStartDeepHealthChecks": list(DEEP_HEALTH_CHECKS),
        }
        if storage:
            gpu_group["InstanceStorageConfigs"] = storage
        groups = [gpu_group]
        if orchestrator == "slurm":
            groups.insert(
                0,
                {
                    "InstanceGroupName": CONTROLLER_GROUP,
                    "InstanceType": os.environ.get("CLUSTER_CONTROLLER_INSTANCE_TYPE", "ml.m5.12xlarge"),
                    "InstanceCount": 1,
                    "LifeCycleConfig": lifecycle,
                    "ExecutionRole": role,
                    "ThreadsPerCore": 1,
                },
            )
        request: dict[str, Any] = {
            "ClusterName": name,
            "InstanceGroups": groups,
            "NodeRecovery": "Automatic",
            "Tags": [
                {"Key": MANAGED_TAG, "Value": "true"},
                {"Key": LAST_ACTIVITY_TAG, "Value": _now().isoformat(timespec="seconds")},
            ],
        }
        subnets, groups_sg = env_list("CLUSTER_SUBNETS"), env_list("CLUSTER_SECURITY_GROUPS")
        if subnets or groups_sg:
            if not (subnets and groups_sg):
                raise BackendConfigError("CLUSTER_SUBNETS and CLUSTER_SECURITY_GROUPS must be set together")
            request["VpcConfig"] = {"Subnets": subnets, "SecurityGroupIds": groups_sg}
        if orchestrator == "eks":
            request["Orchestrator"] = {"Eks": {"ClusterArn": env("EKS_CLUSTER_ARN")}}
        return request

    def _describe_raw(self, name: str) -> dict | None:
        try:
            return self.sm.describe_cluster(ClusterName=name)
        except self.sm.exceptions.ClientError as e:
            if e.response["Error"]["Code"] in _NOT_FOUND_CODES:
                return None
            raise

    def _state(self, desc: dict) -> ClusterState:
        orch = desc.get("Orchestrator") or {}
        # DescribeCluster names the orchestrator when it is not the default; moto omits it: then the setting.
        if "Eks" in orch:
            orchestrator = "eks"
        elif orch:
            orchestrator = "slurm"
        else:
            orchestrator = self.orchestrator_setting()
        return ClusterState(
            name=desc["ClusterName"],
            arn=desc.get("ClusterArn"),
            status=desc["ClusterStatus"],
            instance_groups=[
                {k: v for k, v in g.items() if k != "LifeCycleConfig"} for g in desc.get("InstanceGroups", [])
            ],
            orchestrator=orchestrator,
        )

    def ensure_cluster(self, name: str) -> ClusterState:
        desc = self._describe_raw(name)
        if desc is None:
            self.sm.create_cluster(**self.create_cluster_request(name))
            desc = self._describe_raw(name)
            if desc is None:
                raise ClusterNotFound(f"cluster {name!r} was created but cannot be described")
        return self._state(desc)

    def describe_cluster(self, name: str) -> ClusterState:
        desc = self._describe_raw(name)
        return ClusterState(name=name, status="NotFound") if desc is None else self._state(desc)

    def scale_cluster(self, name: str, count: int) -> ClusterState:
        """UpdateCluster with the GPU group's own spec and the new InstanceCount."""
        desc = self._describe_raw(name)
        if desc is None:
            raise ClusterNotFound(f"no HyperPod cluster {name!r}")
        group = next(
            (g for g in desc.get("InstanceGroups", []) if g["InstanceGroupName"] == self.worker_group), None
        )
        if group is None:
            raise BackendConfigError(f"cluster {name!r} has no instance group {self.worker_group!r}")
        spec = {k: group[k] for k in _GROUP_SPEC_KEYS if k in group}
        spec["InstanceCount"] = count
        self.sm.update_cluster(ClusterName=name, InstanceGroups=[spec])
        return self.describe_cluster(name)

    def replace_node(self, name: str, instance_id: str) -> str:
        answer = self.sm.batch_replace_cluster_nodes(ClusterName=name, NodeIds=[instance_id])
        failed = answer.get("Failed") or []
        if failed:
            f = failed[0]
            raise NodeReplaceFailed(
                f"cannot replace {f['NodeId']} in {name}: {f['ErrorCode']}: {f['Message']}"
            )
        return f"replacing {', '.join(answer.get('Successful') or [instance_id])} in cluster {name}"

    def delete_cluster(self, name: str) -> None:
        if self._describe_raw(name) is not None:
            self.sm.delete_cluster(ClusterName=name)

    def _tags(self, arn: str) -> dict[str, str]:
        tags: dict[str, str] = {}
        kwargs: dict[str, Any] = {"ResourceArn": arn}
        while True:
            page = self.sm.list_tags(**kwargs)
            tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
            if not page.get("NextToken"):
                return tags
            kwargs["NextToken"] = page["NextToken"]

    def _mark_activity(self, arn: str, job_id: str | None) -> None:
        tags = [{"Key": LAST_ACTIVITY_TAG, "Value": _now().isoformat(timespec="seconds")}]
        if job_id:
            tags.append({"Key": ACTIVE_JOB_TAG, "Value": job_id})
        self.sm.add_tags(ResourceArn=arn, Tags=tags)

    def list_idle_clusters(self, idle_minutes: int) -> list[str]:
        """Managed, InService clusters whose last job ended (or which never had one) idle_minutes ago or more."""
        idle = []
        kwargs: dict[str, Any] = {}
        while True:
            page = self.sm.list_clusters(**kwargs)
            for summary in page.get("ClusterSummaries", []):
                if summary["ClusterStatus"] != "InService":
                    continue
                tags = self._tags(summary["ClusterArn"])
                if tags.get(MANAGED_TAG) != "true":
                    continue  # not ours: never torn down by this control plane
                job = tags.get(ACTIVE_JOB_TAG)
                if job and self.job_status(job) == "RUNNING":
                    self._mark_activity(summary["ClusterArn"], job)
                    continue
                last = tags.get(LAST_ACTIVITY_TAG)
                since = dt.datetime.fromisoformat(last) if last else summary["CreationTime"]
                if (_now() - since).total_seconds() >= idle_minutes * 60:
                    idle.append(summary["ClusterName"])
            if not page.get("NextToken"):
                return idle
            kwargs["NextToken"] = page["NextToken"]

    # ------------------------------------------------------------------ data
    @property
    def fsx(self) -> Any:
        return self._fsx or self._client("fsx")

    def stage_data(self, dataset_uri: str, run_id: str) -> str:
        """Link the dataset's S3 prefix into FSx for Lustre; returns its folder on the nodes (/fsx/datasets/NAME/)."""
        from moe_control.compute.fsx import stage_dataset

        return stage_dataset(self.fsx, env("FSX_FILESYSTEM_ID"), self.fsx_mount, dataset_uri)["path"]

    def _check_staged(self, data_path: str) -> None:
        from moe_control.compute.fsx import staging_state

        fs_path = data_path[len(self.fsx_mount) :]
        state, why = staging_state(self.fsx, env("FSX_FILESYSTEM_ID"), fs_path)
        if state == "IN_PROGRESS":
            raise StagingInProgress(why)
        if state == "FAILED":
            raise StagingFailed(why)

    # ------------------------------------------------------------------ training
    @property
    def slurm(self) -> Any:
        if self._slurm is None:
            from moe_control.compute.slurm import DEFAULT_API_VERSION, SlurmRestClient

            ssm = self._ssm or self._client("ssm")
            token = ssm.get_parameter(Name=env("SLURM_JWT_PARAMETER"), WithDecryption=True)["Parameter"][
                "Value"
            ]
            self._slurm = SlurmRestClient(
                env("SLURMRESTD_URL"),
                user=os.environ.get("SLURM_USER", "ubuntu"),
                token=token,
                api_version=os.environ.get("SLURM_API_VERSION", DEFAULT_API_VERSION),
            )
        return self._slurm

    @property
    def kube(self) -> Any:
        if self._kube is None:
            from moe_control.compute.eks import KubernetesApi

            self._kube = KubernetesApi.for_eks_cluster(env("EKS_CLUSTER_ARN"))
        return self._kube

    def launch_training(self, job: TrainingJob) -> LaunchedJob:
        cluster = job.cluster_name or env("CLUSTER_NAME")
        desc = self._describe_raw(cluster)
        if desc is None:
            raise ClusterNotFound(f"no HyperPod cluster {cluster!r}")
        state = self._state(desc)
        if state.status != "InService":
            raise ClusterNotReady(f"cluster {cluster!r} is {state.status}")
        if (
            job.data_path
            and job.data_path.startswith(self.fsx_mount + "/")
            and os.environ.get("FSX_FILESYSTEM_ID")
        ):
            self._check_staged(job.data_path)
        group = next((g for g in state.instance_groups if g["InstanceGroupName"] == self.worker_group), {})
        nodes = max(1, int(group.get("CurrentCount") or group.get("TargetCount") or 1))
        gpus = env_int("CLUSTER_GPUS_PER_NODE", 8)
        output = self.run_output(job.run_id)
        if state.orchestrator == "slurm":
            from moe_control.compute.slurm import job_description, render_sbatch_script

            script = render_sbatch_script(
                job, output=output, gpus_per_node=gpus, image=os.environ.get("TRAINING_IMAGE_URI")
            )
            slurm_id = self.slurm.submit(
                script,
                job_description(job, nodes=nodes, output=output, partition=os.environ.get("SLURM_PARTITION")),
            )
            job_id, details = f"slurm:{cluster}:{slurm_id}", {"slurm_job_id": slurm_id}
        else:
            from moe_control.compute.eks import job_name, render_pytorchjob

            namespace = os.environ.get("EKS_NAMESPACE", "kubeflow")
            manifest = render_pytorchjob(
                job,
                name=job_name(job.run_id),
                namespace=namespace,
                image=env("TRAINING_IMAGE_URI"),
                nodes=nodes,
                gpus_per_node=gpus,
                output=output,
                instance_type=group.get("InstanceType"),
                fsx_claim=os.environ.get("FSX_PVC_NAME", "fsx-claim") or None,
                max_retries=env_int("EKS_JOB_MAX_RETRIES", 3),
            )
            name = self.kube.create_pytorchjob(manifest)
            job_id, details = f"eks:{namespace}:{name}", {"namespace": namespace, "name": name}
        self._mark_activity(desc["ClusterArn"], job_id)
        details.update(cluster=cluster, nodes=nodes, output=output, orchestrator=state.orchestrator)
        return LaunchedJob(job_id=job_id, backend="hyperpod", details=details)

    @staticmethod
    def _parse_job_id(job_id: str) -> tuple[str, str, str]:
        kind, _, rest = job_id.partition(":")
        first, _, second = rest.partition(":")
        if kind not in ("slurm", "eks") or not first or not second:
            raise JobNotFound(f"not a HyperPod job id (slurm:CLUSTER:ID or eks:NAMESPACE:NAME): {job_id!r}")
        return kind, first, second

    def job_status(self, job_id: str) -> JobStatus:
        kind, first, second = self._parse_job_id(job_id)
        if kind == "slurm":
            return self.slurm.status(second)
        return self.kube.pytorchjob_status(first, second)

    def stop_training(self, job_id: str, signal: Literal["TERM", "KILL"] = "TERM") -> None:
        """TERM lets the worker checkpoint and exit 75 (Slurm: SIGTERM to the steps; Kubernetes: pod
        termination with its grace period); KILL stops it at once."""
        kind, first, second = self._parse_job_id(job_id)
        if kind == "slurm":
            self.slurm.cancel(second, "SIGKILL" if signal == "KILL" else "SIGTERM")
        else:
            self.kube.delete_pytorchjob(first, second, grace_seconds=0 if signal == "KILL" else None)

    # ------------------------------------------------------------------ inference
    @property
    def fleet(self) -> Any:
        from moe_control.compute.fleet import SageMakerFleet

        return SageMakerFleet(self.sm)

    def deploy_inference(
        self, model_uri: str, endpoint_name: str, placement_uri: str | None = None
    ) -> Endpoint:
        return self.fleet.deploy(model_uri, endpoint_name, placement_uri)

    def stop_inference(self, endpoint_id: str) -> None:
        self.fleet.stop(endpoint_id)

    def endpoint_status(self, endpoint_id: str) -> Endpoint:
        return self.fleet.status(endpoint_id)
