"""HyperPod job submission, FSx staging and the SageMaker endpoint fleet.

slurmrestd and the Kubernetes API server cannot exist here: a small local HTTP server (conftest.FakeApiServer)
stands in for them and records what the backend sent. FSx data repository associations/tasks and UpdateEndpoint
are not in moto 5.2.5: botocore's Stubber (FSx) and a before-call hook (UpdateEndpoint, on a client that moto
serves for everything else) answer them after botocore has validated the request against the real API model.
"""

from __future__ import annotations

import base64
import datetime as dt
import shlex
import urllib.parse

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber

from moe_control.compute import ClusterNotReady, StagingInProgress, TrainingJob
from moe_control.compute.eks import KubernetesApi, eks_bearer_token, map_conditions, render_pytorchjob
from moe_control.compute.hyperpod import ACTIVE_JOB_TAG, HyperPodBackend
from moe_control.compute.slurm import SlurmRestClient, map_state, render_sbatch_script

ROLE = "arn:aws:iam::123456789012:role/hyperpod-nodes"


def _job(**kw) -> TrainingJob:
    base = dict(
        run_id="stdlib-0123456789",
        dataset_uri="s3://data/datasets/stdlib/manifest.json",
        preset="mini",
        max_steps=1000,
        checkpoint_every=100,
        seq_len=2048,
        batch_size=64,
        vocab_size=32000,
        checkpoint_uri="s3://ckpt/checkpoints/stdlib-0123456789",
        artifact_uri="s3://models/models/stdlib-0123456789/",
        task_token="token with spaces & 'quotes'",
    )
    return TrainingJob(**(base | kw))


@pytest.fixture
def cluster_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTER_EXECUTION_ROLE_ARN", ROLE)
    monkeypatch.setenv("CLUSTER_LIFECYCLE_S3_URI", "s3://sagemaker-moe-lifecycle/slurm/")
    monkeypatch.setenv("CLUSTER_INSTANCE_TYPE", "ml.p5.48xlarge")
    monkeypatch.setenv("CLUSTER_INSTANCE_COUNT", "2")
    monkeypatch.setenv("CLUSTER_NAME", "moe-train")
    monkeypatch.setenv("TRAINING_IMAGE_URI", "123456789012.dkr.ecr.us-east-1.amazonaws.com/moe-train:1")


# ---------------------------------------------------------------- Slurm
def test_sbatch_script_runs_the_entrypoint_under_srun_auto_resume_with_every_option_quoted() -> None:
    job = _job()
    script = render_sbatch_script(job, output="/fsx/runs/r", gpus_per_node=8, image="img:1")
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--auto-resume=1" in srun and "--container-image=img:1" in srun
    # The command line after `_` must come back as exactly the worker's arguments.
    tail = script.split('exec /opt/moe/entrypoint.sh "$@"\' _ ', 1)[1].strip()
    assert shlex.split(tail) == job.worker_args(output="/fsx/runs/r")
    assert "export NPROC_PER_NODE=8" in script and 'NODE_RANK="$SLURM_NODEID"' in script


def test_slurm_states_map_to_workflow_states() -> None:
    assert map_state(["PENDING"]) == "RUNNING"
    assert map_state("RUNNING") == "RUNNING"
    assert map_state(["COMPLETED"]) == "SUCCEEDED"
    assert map_state(["NODE_FAIL"]) == "FAILED"
    assert map_state(["CANCELLED"]) == "FAILED"


def test_launch_on_slurm_posts_the_job_to_slurmrestd_with_the_token_from_parameter_store(
    aws, cluster_env, fake_api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURMRESTD_URL", fake_api.url)
    monkeypatch.setenv("SLURM_JWT_PARAMETER", "/moe/slurmrestd/jwt/ubuntu")
    boto3.client("ssm").put_parameter(Name="/moe/slurmrestd/jwt/ubuntu", Value="jwt-123", Type="SecureString")
    fake_api.routes[("POST", "/slurm/v0.0.40/job/submit")] = (200, {"job_id": 42, "errors": []})
    fake_api.routes[("GET", "/slurm/v0.0.40/job/42")] = (200, {"jobs": [{"job_state": ["RUNNING"]}]})
    fake_api.routes[("DELETE", "/slurm/v0.0.40/job/42")] = (200, {"errors": []})
    backend = HyperPodBackend()
    backend.ensure_cluster("moe-train")

    launched = backend.launch_training(_job(data_path="/fsx/datasets/stdlib/"))

    assert launched.job_id == "slurm:moe-train:42" and launched.details["nodes"] == 2
    post = fake_api.requests[0]
    assert (
        post["headers"]["x-slurm-user-token"] == "jwt-123"
        and post["headers"]["x-slurm-user-name"] == "ubuntu"
    )
    assert post["body"]["job"]["nodes"] == "2" and post["body"]["job"]["tasks_per_node"] == 1
    assert post["body"]["job"]["current_working_directory"] == "/fsx/runs/stdlib-0123456789"
    assert "--data /fsx/datasets/stdlib/" in post["body"]["script"]
    assert backend.job_status(launched.job_id) == "RUNNING"
    backend.stop_training(launched.job_id, "TERM")
    assert fake_api.requests[-1]["method"] == "DELETE" and "signal=SIGTERM" in fake_api.requests[-1]["path"]
    # The cluster remembers its job: how list_idle_clusters knows it is busy.
    arn = backend.describe_cluster("moe-train").arn
    assert backend._tags(arn)[ACTIVE_JOB_TAG] == "slurm:moe-train:42"


def test_slurmrestd_refusal_is_a_named_launch_failure(fake_api) -> None:
    from moe_control.compute.slurm import SlurmRestError

    fake_api.routes[("POST", "/slurm/v0.0.40/job/submit")] = (
        500,
        {"errors": [{"error": "Requested node configuration is not available"}]},
    )
    with pytest.raises(SlurmRestError, match="node configuration"):
        SlurmRestClient(fake_api.url, "ubuntu", "t").submit("#!/bin/bash", {"name": "x"})
    fake_api.routes[("GET", "/slurm/v0.0.40/job/7")] = (
        200,
        {"jobs": [], "errors": [{"error": "Invalid job id"}]},
    )
    assert SlurmRestClient(fake_api.url, "ubuntu", "t").status("7") == "NOT_FOUND"


def test_launch_refuses_a_cluster_that_is_not_in_service(cluster_env) -> None:
    sm = boto3.client("sagemaker", region_name="us-east-1")
    with Stubber(sm) as stub:
        stub.add_response(
            "describe_cluster",
            {
                "ClusterArn": "arn:aws:sagemaker:us-east-1:123456789012:cluster/x",
                "ClusterName": "moe-train",
                "ClusterStatus": "Creating",
                "InstanceGroups": [],
            },
        )
        with pytest.raises(ClusterNotReady, match="Creating"):
            HyperPodBackend(sagemaker=sm).launch_training(_job())


# ---------------------------------------------------------------- EKS
def test_pytorchjob_manifest_asks_for_auto_resume_healthy_nodes_and_all_gpus() -> None:
    job = _job()
    m = render_pytorchjob(
        job, name="moe-x", namespace="kubeflow", image="img:1", nodes=4, gpus_per_node=8, output="/fsx/runs/r",
        instance_type="ml.p5.48xlarge",
    )  # fmt: skip
    assert m["kind"] == "PyTorchJob" and m["apiVersion"] == "kubeflow.org/v1"
    assert m["metadata"]["annotations"]["sagemaker.amazonaws.com/enable-job-auto-resume"] == "true"
    specs = m["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 3
    pod = specs["Worker"]["template"]["spec"]
    assert pod["nodeSelector"]["sagemaker.amazonaws.com/node-health-status"] == "Schedulable"
    assert pod["nodeSelector"]["node.kubernetes.io/instance-type"] == "ml.p5.48xlarge"
    (container,) = pod["containers"]
    assert container["name"] == "pytorch" and container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["args"] == job.worker_args(output="/fsx/runs/r")
    assert specs["Worker"]["restartPolicy"] == "OnFailure"
    one = render_pytorchjob(job, name="x", namespace="n", image="i", nodes=1, gpus_per_node=8, output="/o")
    assert "Worker" not in one["spec"]["pytorchReplicaSpecs"]


def test_pytorchjob_conditions_map_to_workflow_states() -> None:
    assert map_conditions(None) == "RUNNING"
    running = [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]
    assert map_conditions({"conditions": running}) == "RUNNING"
    assert map_conditions({"conditions": [*running, {"type": "Succeeded", "status": "True"}]}) == "SUCCEEDED"
    assert map_conditions({"conditions": [*running, {"type": "Failed", "status": "True"}]}) == "FAILED"


def test_eks_token_is_a_presigned_get_caller_identity_bound_to_the_cluster() -> None:
    sts = boto3.client(
        "sts", region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret"
    )
    token = eks_bearer_token("moe-eks", sts_client=sts)
    assert token.startswith("k8s-aws-v1.")
    url = base64.urlsafe_b64decode(token[len("k8s-aws-v1.") :] + "==").decode()
    query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    assert query["Action"] == ["GetCallerIdentity"]
    assert "x-k8s-aws-id" in query["X-Amz-SignedHeaders"][0]
    assert query["X-Amz-Expires"] == ["60"]


def test_launch_on_eks_posts_a_pytorchjob_and_reads_its_status(
    aws, cluster_env, fake_api, monkeypatch
) -> None:
    monkeypatch.setenv("CLUSTER_ORCHESTRATOR", "eks")
    monkeypatch.setenv("EKS_CLUSTER_ARN", "arn:aws:eks:us-east-1:123456789012:cluster/moe-eks")
    path = "/apis/kubeflow.org/v1/namespaces/kubeflow/pytorchjobs"
    fake_api.routes[("POST", path)] = lambda body: (201, body)
    kube = KubernetesApi(fake_api.url, token=lambda: "k8s-aws-v1.test")
    backend = HyperPodBackend(kube=kube)
    backend.ensure_cluster("moe-train")

    launched = backend.launch_training(_job())

    ns, name = launched.details["namespace"], launched.details["name"]
    assert launched.job_id == f"eks:{ns}:{name}"
    post = fake_api.requests[0]
    assert post["headers"]["authorization"] == "Bearer k8s-aws-v1.test"
    assert (
        post["body"]["metadata"]["name"] == name
        and post["body"]["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    )
    fake_api.routes[("GET", f"{path}/{name}")] = (
        200,
        {"status": {"conditions": [{"type": "Succeeded", "status": "True"}]}},
    )
    assert backend.job_status(launched.job_id) == "SUCCEEDED"
    assert backend.job_status(f"eks:{ns}:gone") == "NOT_FOUND"
    fake_api.routes[("DELETE", f"{path}/{name}")] = (200, {})
    backend.stop_training(launched.job_id, "KILL")
    assert fake_api.requests[-1]["body"]["gracePeriodSeconds"] == 0


def test_kubernetes_api_for_an_eks_cluster_uses_its_endpoint_and_ca(aws, monkeypatch) -> None:
    eks = boto3.client("eks")
    eks.create_cluster(name="moe-eks", roleArn=ROLE, resourcesVpcConfig={"subnetIds": ["subnet-1"]})
    described = eks.describe_cluster(name="moe-eks")["cluster"]
    captured: dict = {}
    # moto's CA data is not a certificate, so no TLS context can be built from it: record the arguments instead.
    monkeypatch.setattr(KubernetesApi, "__init__", lambda self, server, token, ca_data=None: captured.update(
        server=server, ca=ca_data, token=token))  # fmt: skip

    KubernetesApi.for_eks_cluster(described["arn"])

    assert captured["server"] == described["endpoint"]
    assert captured["ca"] == described["certificateAuthority"]["data"]
    assert captured["token"]().startswith("k8s-aws-v1.")


# ---------------------------------------------------------------- FSx for Lustre
def _assoc(lifecycle: str) -> dict:
    return {
        "AssociationId": "dra-0123456789abcdef0",
        "FileSystemId": "fs-0123456789abcdef0",
        "Lifecycle": lifecycle,
        "FileSystemPath": "/datasets/stdlib",
        "DataRepositoryPath": "s3://data/datasets/stdlib/",
    }


def test_first_staging_links_the_dataset_prefix_and_a_later_one_imports_its_metadata(monkeypatch) -> None:
    monkeypatch.setenv("FSX_FILESYSTEM_ID", "fs-0123456789abcdef0")
    fsx = boto3.client("fsx", region_name="us-east-1")
    backend = HyperPodBackend(sagemaker=boto3.client("sagemaker", region_name="us-east-1"), fsx=fsx)
    uri = "s3://data/datasets/stdlib/manifest.json"
    with Stubber(fsx) as stub:
        stub.add_response("describe_data_repository_associations", {"Associations": []})
        stub.add_response(
            "create_data_repository_association",
            {"Association": _assoc("CREATING")},
            {
                "FileSystemId": "fs-0123456789abcdef0",
                "FileSystemPath": "/datasets/stdlib",
                "DataRepositoryPath": "s3://data/datasets/stdlib/",
                "BatchImportMetaDataOnCreate": True,
                "S3": {"AutoImportPolicy": {"Events": ["NEW", "CHANGED", "DELETED"]}},
                "Tags": [{"Key": "moe-on-aws:dataset", "Value": "stdlib"}],
            },
        )
        assert backend.stage_data(uri, "run-1") == "/fsx/datasets/stdlib/"

        stub.add_response("describe_data_repository_associations", {"Associations": [_assoc("AVAILABLE")]})
        stub.add_response(
            "create_data_repository_task",
            {"DataRepositoryTask": {"TaskId": "task-0123456789abcdef0", "Lifecycle": "PENDING",
                                    "FileSystemId": "fs-0123456789abcdef0",
                                    "Type": "IMPORT_METADATA_FROM_REPOSITORY",
                                    "CreationTime": dt.datetime(2026, 1, 1)}},
            {"Type": "IMPORT_METADATA_FROM_REPOSITORY", "FileSystemId": "fs-0123456789abcdef0",
             "Paths": ["datasets/stdlib"], "Report": {"Enabled": False}},
        )  # fmt: skip
        assert backend.stage_data(uri, "run-2") == "/fsx/datasets/stdlib/"
        stub.assert_no_pending_responses()


def test_launch_waits_while_the_dataset_is_still_being_imported(cluster_env, monkeypatch) -> None:
    monkeypatch.setenv("FSX_FILESYSTEM_ID", "fs-0123456789abcdef0")
    sm = boto3.client("sagemaker", region_name="us-east-1")
    fsx = boto3.client("fsx", region_name="us-east-1")
    with Stubber(sm) as sm_stub, Stubber(fsx) as fsx_stub:
        sm_stub.add_response(
            "describe_cluster",
            {"ClusterArn": "arn:aws:sagemaker:us-east-1:123456789012:cluster/x", "ClusterName": "moe-train",
             "ClusterStatus": "InService", "InstanceGroups": []},
        )  # fmt: skip
        fsx_stub.add_response("describe_data_repository_associations", {"Associations": [_assoc("CREATING")]})
        with pytest.raises(StagingInProgress, match="CREATING"):
            HyperPodBackend(sagemaker=sm, fsx=fsx).launch_training(_job(data_path="/fsx/datasets/stdlib/"))


# ---------------------------------------------------------------- SageMaker endpoints
@pytest.fixture
def fleet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_IMAGE_URI", "123456789012.dkr.ecr.us-east-1.amazonaws.com/moe-serve:1")
    monkeypatch.setenv("INFERENCE_EXECUTION_ROLE_ARN", "arn:aws:iam::123456789012:role/sagemaker")
    monkeypatch.setenv("INFERENCE_INSTANCE_TYPE", "ml.g4dn.12xlarge")  # moto's list of endpoint types is old
    monkeypatch.setenv("INFERENCE_ROLLBACK_ALARMS", "moe-5xx,moe-latency")
    monkeypatch.setenv("INFERENCE_CANARY_PERCENT", "20")


def test_first_deploy_creates_the_endpoint_and_a_second_one_is_a_canary_with_rollback_alarms(
    aws, fleet_env
) -> None:
    backend = HyperPodBackend()
    endpoint = backend.deploy_inference(
        "s3://models/models/run-1/", "moe-serving", "s3://models/placement.json"
    )

    assert endpoint.status == "InService" and endpoint.url is None and endpoint.endpoint_id == "moe-serving"
    assert backend.endpoint_status("moe-serving").model_uri == "s3://models/models/run-1/"

    updates: list[dict] = []

    # moto 5.2.5 has no UpdateEndpoint: record its parameters (validated by botocore) and answer it here.
    backend.sm.meta.events.register(
        "provide-client-params.sagemaker.UpdateEndpoint", lambda params, **_: updates.append(params)
    )
    backend.sm.meta.events.register(
        "before-call.sagemaker.UpdateEndpoint",
        lambda **_: (AWSResponse("https://sagemaker", 200, {}, None), {"EndpointArn": "arn:x"}),
    )
    backend.deploy_inference("s3://models/models/run-2/", "moe-serving", None)

    (update,) = updates
    policy = update["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert policy["Type"] == "CANARY" and policy["CanarySize"] == {"Type": "CAPACITY_PERCENT", "Value": 20}
    alarms = update["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]
    assert alarms == [{"AlarmName": "moe-5xx"}, {"AlarmName": "moe-latency"}]
    model = backend.sm.describe_model(ModelName=backend.sm.describe_endpoint_config(
        EndpointConfigName=update["EndpointConfigName"])["ProductionVariants"][0]["ModelName"])  # fmt: skip
    assert (
        model["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"] == "s3://models/models/run-2/"
    )

    backend.stop_inference("moe-serving")
    assert backend.endpoint_status("moe-serving").status == "NotFound"
