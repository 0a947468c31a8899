"""HyperPod cluster operations: CreateCluster/DescribeCluster/DeleteCluster/ListClusters against moto's SageMaker;
UpdateCluster and BatchReplaceClusterNodes (which moto 5.2.5 does not have) against botocore's Stubber."""

from __future__ import annotations

import datetime as dt
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from moe_control.compute import BackendConfigError, ClusterNotFound, NodeReplaceFailed, get_backend
from moe_control.compute.hyperpod import ACTIVE_JOB_TAG, LAST_ACTIVITY_TAG, MANAGED_TAG, HyperPodBackend

ROLE = "arn:aws:iam::123456789012:role/hyperpod-nodes"
EKS_ARN = "arn:aws:eks:us-east-1:123456789012:cluster/moe-eks"


@pytest.fixture
def cluster_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTER_EXECUTION_ROLE_ARN", ROLE)
    # HyperPod's node role policy only reads lifecycle scripts from buckets named sagemaker-* (moto checks it too).
    monkeypatch.setenv("CLUSTER_LIFECYCLE_S3_URI", "s3://sagemaker-moe-lifecycle/slurm/")
    monkeypatch.setenv("CLUSTER_INSTANCE_TYPE", "ml.p5.48xlarge")
    monkeypatch.setenv("CLUSTER_INSTANCE_COUNT", "4")
    monkeypatch.setenv("CLUSTER_SUBNETS", "subnet-1,subnet-2")
    monkeypatch.setenv("CLUSTER_SECURITY_GROUPS", "sg-1")


def _capture(client: Any, operation: str) -> list[dict]:
    """The parameters of every call of `operation` (after botocore validated them against the API model)."""
    seen: list[dict] = []
    client.meta.events.register(
        f"provide-client-params.sagemaker.{operation}", lambda params, **_: seen.append(params)
    )
    return seen


def test_get_backend_picks_by_environment_and_names_the_choices(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("COMPUTE_BACKEND", "local")
    monkeypatch.setenv("LOCALCLOUD_STATE_DIR", str(tmp_path))
    assert get_backend().name == "local"
    monkeypatch.setenv("COMPUTE_BACKEND", "kubernetes")
    with pytest.raises(ValueError, match="hyperpod, local"):
        get_backend()


def test_slurm_cluster_is_created_with_deep_health_checks_and_automatic_node_recovery(
    aws, cluster_env
) -> None:
    backend = HyperPodBackend()
    created = _capture(backend.sm, "CreateCluster")

    state = backend.ensure_cluster("moe-train")

    assert state.status == "InService" and state.orchestrator == "slurm"
    (request,) = created
    assert request["NodeRecovery"] == "Automatic"
    assert "Orchestrator" not in request  # Slurm is HyperPod's default orchestrator
    controller, gpus = request["InstanceGroups"]
    assert controller["InstanceGroupName"] == "controller-machine" and controller["InstanceCount"] == 1
    assert "OnStartDeepHealthChecks" not in controller  # deep health checks are for accelerator nodes
    assert gpus["InstanceType"] == "ml.p5.48xlarge" and gpus["InstanceCount"] == 4
    assert gpus["OnStartDeepHealthChecks"] == ["InstanceStress", "InstanceConnectivity"]
    assert request["VpcConfig"] == {"Subnets": ["subnet-1", "subnet-2"], "SecurityGroupIds": ["sg-1"]}
    # moto keeps the groups as sent: what DescribeCluster returns is what was asked for.
    described = {g["InstanceGroupName"]: g for g in state.instance_groups}
    assert described["worker-group-1"]["OnStartDeepHealthChecks"] == [
        "InstanceStress",
        "InstanceConnectivity",
    ]
    assert described["worker-group-1"]["CurrentCount"] == 4


def test_eks_cluster_names_the_eks_orchestrator(aws, cluster_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTER_ORCHESTRATOR", "eks")
    monkeypatch.setenv("EKS_CLUSTER_ARN", EKS_ARN)
    backend = HyperPodBackend()
    created = _capture(backend.sm, "CreateCluster")

    state = backend.ensure_cluster("moe-eks-train")

    assert state.orchestrator == "eks"
    assert created[0]["Orchestrator"] == {"Eks": {"ClusterArn": EKS_ARN}}
    assert [g["InstanceGroupName"] for g in created[0]["InstanceGroups"]] == ["worker-group-1"]


def test_eks_cluster_without_eks_cluster_arn_is_a_config_error(aws, cluster_env, monkeypatch) -> None:
    monkeypatch.setenv("CLUSTER_ORCHESTRATOR", "eks")
    monkeypatch.delenv("EKS_CLUSTER_ARN", raising=False)
    with pytest.raises(BackendConfigError, match="EKS_CLUSTER_ARN"):
        HyperPodBackend().ensure_cluster("c")


def test_ensure_cluster_reuses_an_existing_cluster(aws, cluster_env) -> None:
    backend = HyperPodBackend()
    created = _capture(backend.sm, "CreateCluster")
    first = backend.ensure_cluster("moe-train")
    second = backend.ensure_cluster("moe-train")
    assert len(created) == 1 and first.arn == second.arn


def test_missing_cluster_is_not_found_and_delete_is_idempotent(aws, cluster_env) -> None:
    backend = HyperPodBackend()
    assert backend.describe_cluster("nope").status == "NotFound"
    backend.ensure_cluster("moe-train")
    backend.delete_cluster("moe-train")
    backend.delete_cluster("moe-train")
    assert backend.describe_cluster("moe-train").status == "NotFound"


def _described(count: int, status: str = "InService") -> dict:
    return {
        "ClusterArn": "arn:aws:sagemaker:us-east-1:123456789012:cluster/abc123",
        "ClusterName": "moe-train",
        "ClusterStatus": status,
        "CreationTime": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "InstanceGroups": [
            {
                "InstanceGroupName": "worker-group-1",
                "InstanceType": "ml.p5.48xlarge",
                "CurrentCount": count,
                "TargetCount": count,
                "LifeCycleConfig": {"SourceS3Uri": "s3://sagemaker-x/", "OnCreate": "on_create.sh"},
                "ExecutionRole": ROLE,
                "ThreadsPerCore": 1,
                "OnStartDeepHealthChecks": ["InstanceStress", "InstanceConnectivity"],
            }
        ],
    }


def test_scale_cluster_updates_the_gpu_group_with_its_own_spec(cluster_env) -> None:
    sm = boto3.client("sagemaker", region_name="us-east-1")
    with Stubber(sm) as stub:
        stub.add_response("describe_cluster", _described(4), {"ClusterName": "moe-train"})
        stub.add_response(
            "update_cluster",
            {"ClusterArn": "arn:aws:sagemaker:us-east-1:123456789012:cluster/abc123"},
            {
                "ClusterName": "moe-train",
                "InstanceGroups": [
                    {
                        "InstanceGroupName": "worker-group-1",
                        "InstanceType": "ml.p5.48xlarge",
                        "InstanceCount": 8,
                        "LifeCycleConfig": {"SourceS3Uri": "s3://sagemaker-x/", "OnCreate": "on_create.sh"},
                        "ExecutionRole": ROLE,
                        "ThreadsPerCore": 1,
                        "OnStartDeepHealthChecks": ["InstanceStress", "InstanceConnectivity"],
                    }
                ],
            },
        )
        stub.add_response("describe_cluster", _described(4, "Updating"), {"ClusterName": "moe-train"})
        state = HyperPodBackend(sagemaker=sm).scale_cluster("moe-train", 8)
        stub.assert_no_pending_responses()
    assert state.status == "Updating"


def test_replace_node_calls_batch_replace_and_reports_refusals(cluster_env) -> None:
    sm = boto3.client("sagemaker", region_name="us-east-1")
    backend = HyperPodBackend(sagemaker=sm)
    with Stubber(sm) as stub:
        params = {"ClusterName": "moe-train", "NodeIds": ["i-0123456789abcdef0"]}
        stub.add_response("batch_replace_cluster_nodes", {"Successful": ["i-0123456789abcdef0"]}, params)
        assert "i-0123456789abcdef0" in backend.replace_node("moe-train", "i-0123456789abcdef0")
        stub.add_response(
            "batch_replace_cluster_nodes",
            {
                "Failed": [
                    {"NodeId": "i-0123456789abcdef0", "ErrorCode": "InstanceIdInUse", "Message": "busy"}
                ],
            },
            params,
        )
        with pytest.raises(NodeReplaceFailed, match="InstanceIdInUse"):
            backend.replace_node("moe-train", "i-0123456789abcdef0")


def test_scale_of_a_missing_cluster_is_cluster_not_found(aws, cluster_env) -> None:
    with pytest.raises(ClusterNotFound):
        HyperPodBackend().scale_cluster("nope", 2)


def test_list_idle_clusters_takes_only_managed_clusters_without_recent_work(aws, cluster_env) -> None:
    backend = HyperPodBackend()
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).isoformat(timespec="seconds")
    idle = backend.ensure_cluster("idle-one")
    backend.sm.add_tags(ResourceArn=idle.arn, Tags=[{"Key": LAST_ACTIVITY_TAG, "Value": old}])
    backend.ensure_cluster("recent-one")  # created just now: its last activity is now
    foreign = backend.sm.create_cluster(
        ClusterName="not-ours",
        InstanceGroups=[
            {
                "InstanceGroupName": "g",
                "InstanceType": "ml.p5.48xlarge",
                "InstanceCount": 1,
                "LifeCycleConfig": {"SourceS3Uri": "s3://sagemaker-x/", "OnCreate": "on_create.sh"},
                "ExecutionRole": ROLE,
                "ThreadsPerCore": 1,
            }
        ],
    )["ClusterArn"]
    backend.sm.add_tags(ResourceArn=foreign, Tags=[{"Key": LAST_ACTIVITY_TAG, "Value": old}])

    assert backend.list_idle_clusters(idle_minutes=60) == ["idle-one"]
    assert MANAGED_TAG in backend._tags(idle.arn)


def test_a_cluster_with_a_running_job_is_not_idle(aws, cluster_env, fake_api) -> None:
    from moe_control.compute.slurm import SlurmRestClient

    fake_api.routes[("GET", "/slurm/v0.0.40/job/42")] = (
        200,
        {"jobs": [{"job_state": ["RUNNING"]}], "errors": []},
    )
    backend = HyperPodBackend(slurm=SlurmRestClient(fake_api.url, "ubuntu", "jwt"))
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).isoformat(timespec="seconds")
    state = backend.ensure_cluster("busy")
    backend.sm.add_tags(
        ResourceArn=state.arn,
        Tags=[{"Key": LAST_ACTIVITY_TAG, "Value": old}, {"Key": ACTIVE_JOB_TAG, "Value": "slurm:busy:42"}],
    )
    assert backend.list_idle_clusters(idle_minutes=60) == []
    # Once the job has ended the clock starts again from now: still not idle for another hour.
    fake_api.routes[("GET", "/slurm/v0.0.40/job/42")] = (200, {"jobs": [{"job_state": ["COMPLETED"]}]})
    assert backend.list_idle_clusters(idle_minutes=60) == []
    assert backend.list_idle_clusters(idle_minutes=0) == ["busy"]
