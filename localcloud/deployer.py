"""Deploy a (transformed) template onto the local cloud, as `sam deploy` does onto AWS.

Resources that moto's CloudFormation creates faithfully go through it, as one stack; the rest are created
directly with the service APIs, in dependency order, because moto's CloudFormation ignores
DefinitionSubstitutions, creates state machines that the executing Step Functions backend cannot see, ignores S3
NotificationConfiguration, has no AWS::ApiGateway::Stage and no Lambda code without Docker. A resource type the
local cloud cannot create stops the deploy with its logical id and type named.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcloud.intrinsics import IntrinsicError, Resolver, references
from localcloud.runtime import FunctionSpec, LambdaRuntime
from localcloud.template import Transformed

log = logging.getLogger("localcloud")

# Created through moto's CloudFormation when everything they refer to is too.
VIA_CLOUDFORMATION = {
    "AWS::S3::Bucket",
    "AWS::DynamoDB::Table",
    "AWS::SNS::Topic",
    "AWS::SQS::Queue",
    "AWS::Logs::LogGroup",
}


class DeployError(Exception):
    """The template cannot be deployed on the local cloud; the message names the resource and the reason."""


@dataclass
class Route:
    method: str  # GET, POST, ... or ANY
    path: str  # /training-jobs/{run_id}
    function: str  # function name


@dataclass
class RestApi:
    logical_id: str
    api_id: str
    stage: str = "v1"
    routes: list[Route] = field(default_factory=list)
    api_key_required: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class Deployment:
    stack_name: str
    physical: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)
    functions: dict[str, FunctionSpec] = field(default_factory=dict)  # by logical id
    apis: dict[str, RestApi] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def by_type(self, rtype: str) -> dict[str, str]:
        return {lid: self.physical[lid] for lid, t in self.types.items() if t == rtype}


def _tiny_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("LOCALCLOUD.txt", "code runs from the local folder; see localcloud/runtime.py\n")
    return buf.getvalue()


def _denies_plain_http(statement: dict[str, Any]) -> bool:
    condition = statement.get("Condition", {}).get("Bool", {})
    return statement.get("Effect") == "Deny" and str(condition.get("aws:SecureTransport")).lower() == "false"


class Deployer:
    def __init__(self, clients: Any, runtime: LambdaRuntime, account_id: str, region: str) -> None:
        self.clients = clients  # callable: service name -> boto3 client on the local cloud
        self.runtime = runtime
        self.account_id = account_id
        self.region = region

    # ---------------------------------------------------------------- planning
    def deploy(self, transformed: Transformed, stack_name: str) -> Deployment:
        template = transformed.template
        resources: dict[str, dict[str, Any]] = template["Resources"]
        d = Deployment(stack_name=stack_name)
        self._code_dirs = transformed.code_dirs
        self._layer_dirs: dict[str, Path] = {}
        self._d = d
        self.resolver = Resolver(
            parameters=transformed.parameters,
            conditions=template.get("Conditions", {}),
            mappings=template.get("Mappings", {}),
            ref=self._ref,
            get_att=self._get_att,
            pseudo={
                "AWS::AccountId": self.account_id,
                "AWS::Region": self.region,
                "AWS::StackName": stack_name,
                "AWS::StackId": f"arn:aws:cloudformation:{self.region}:{self.account_id}:stack/{stack_name}/local",
                "AWS::Partition": "aws",
                "AWS::URLSuffix": "amazonaws.com",
                "AWS::NotificationARNs": [],
            },
        )
        active = {
            lid: r
            for lid, r in resources.items()
            if "Condition" not in r or self.resolver.condition(r["Condition"])
        }
        unsupported = sorted(
            f"{lid} ({r.get('Type')})" for lid, r in active.items() if r.get("Type") not in self.CREATORS
        )
        if unsupported:
            raise DeployError("the local cloud cannot create these resources: " + ", ".join(unsupported))
        self._type_of = {lid: r["Type"] for lid, r in active.items()}
        order = self._order(active)
        via_cfn = self._cloudformation_set(active, order)
        if via_cfn:
            self._create_stack(stack_name, template, transformed.parameters, {k: active[k] for k in via_cfn})
        for lid in order:
            if lid in via_cfn:
                self._after_stack(lid, active[lid])
                continue
            r = active[lid]
            try:
                props = self.resolver.resolve(r.get("Properties") or {})
            except (IntrinsicError, KeyError) as exc:
                raise DeployError(f"{lid} ({r['Type']}): {exc}") from None
            try:
                self.CREATORS[r["Type"]](self, lid, props)
            except DeployError:
                raise
            except Exception as exc:
                raise DeployError(f"{lid} ({r['Type']}): {type(exc).__name__}: {exc}") from exc
            d.types.setdefault(lid, r["Type"])
        for name, output in template.get("Outputs", {}).items():
            try:
                d.outputs[name] = str(self.resolver.resolve(output["Value"]))
            except (IntrinsicError, KeyError) as exc:
                raise DeployError(f"output {name}: {exc}") from None
        return d

    def _order(self, active: dict[str, dict[str, Any]]) -> list[str]:
        deps: dict[str, set[str]] = {}
        for lid, r in active.items():
            refs = references(r.get("Properties") or {}) | references(r.get("Condition") or {})
            depends = r.get("DependsOn") or []
            refs |= set([depends] if isinstance(depends, str) else depends)
            deps[lid] = {x for x in refs if x in active and x != lid}
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(lid: str, path: list[str]) -> None:
            if state.get(lid) == 2:
                return
            if state.get(lid) == 1:
                raise DeployError("circular dependency: " + " -> ".join([*path, lid]))
            state[lid] = 1
            for dep in sorted(deps[lid]):
                visit(dep, [*path, lid])
            state[lid] = 2
            order.append(lid)

        for lid in active:
            visit(lid, [])
        self._deps = deps
        return order

    def _cloudformation_set(self, active: dict[str, dict[str, Any]], order: list[str]) -> set[str]:
        chosen: set[str] = set()
        for lid in order:
            if active[lid]["Type"] in VIA_CLOUDFORMATION and self._deps[lid] <= chosen:
                chosen.add(lid)
        return chosen

    # ---------------------------------------------------------------- moto CloudFormation
    def _create_stack(self, name: str, template: dict[str, Any], params: dict[str, str], res: dict) -> None:
        cfn = self.clients("cloudformation")
        body: dict[str, Any] = {"AWSTemplateFormatVersion": "2010-09-09", "Resources": {}}
        for key in ("Parameters", "Conditions", "Mappings"):
            if key in template:
                body[key] = template[key]
        for lid, r in res.items():
            r = json.loads(json.dumps(r))
            props = r.get("Properties") or {}
            # moto ignores it in CloudFormation; applied directly in _after_stack.
            props.pop("NotificationConfiguration", None)
            body["Resources"][lid] = r
        cfn.create_stack(
            StackName=name,
            TemplateBody=json.dumps(body),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        if stack["StackStatus"] != "CREATE_COMPLETE":
            events = cfn.describe_stack_events(StackName=name)["StackEvents"]
            reasons = [
                f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
                for e in events
                if "FAILED" in e["ResourceStatus"]
            ]
            raise DeployError(f"CloudFormation stack {name}: {stack['StackStatus']}: {'; '.join(reasons)}")
        for r in cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]:
            self._d.physical[r["LogicalResourceId"]] = r["PhysicalResourceId"]
            self._d.types[r["LogicalResourceId"]] = r["ResourceType"]

    def _own_stack(self, lid: str, p: dict[str, Any]) -> None:
        """A CloudFormation-created type that refers to a directly created resource: its own small stack,
        with its properties already resolved."""
        r = {"Type": self._type_of[lid], "Properties": p}
        self._create_stack(f"{self._d.stack_name}-{lid}", {}, {}, {lid: r})
        self._after_stack(lid, r)

    def _after_stack(self, lid: str, r: dict[str, Any]) -> None:
        props = r.get("Properties") or {}
        if r["Type"] == "AWS::S3::Bucket" and "NotificationConfiguration" in props:
            notification = self.resolver.resolve(props["NotificationConfiguration"])
            config: dict[str, Any] = {}
            if notification.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled") in (True, "true"):
                config["EventBridgeConfiguration"] = {}
            for key in ("LambdaConfigurations", "QueueConfigurations", "TopicConfigurations"):
                if key in notification:
                    raise DeployError(f"{lid}: NotificationConfiguration.{key} is not supported locally")
            self.clients("s3").put_bucket_notification_configuration(
                Bucket=self._d.physical[lid], NotificationConfiguration=config
            )

    # ---------------------------------------------------------------- references
    def _ref(self, lid: str) -> str:
        if lid not in self._d.physical:
            raise IntrinsicError(f"Ref to {lid!r}: no such resource or parameter (or not created yet)")
        return self._d.physical[lid]

    def _get_att(self, lid: str, attr: str) -> str:
        if lid not in self._d.physical:
            raise IntrinsicError(f"GetAtt {lid}.{attr}: no such resource (or not created yet)")
        attrs = self._d.attributes.get(lid) or self._derive_attributes(lid)
        if attr not in attrs:
            raise IntrinsicError(
                f"GetAtt {lid}.{attr}: {self._d.types.get(lid)} has no attribute {attr!r} locally"
            )
        return attrs[attr]

    def _derive_attributes(self, lid: str) -> dict[str, str]:
        rtype, phys = self._d.types[lid], self._d.physical[lid]
        acct, region = self.account_id, self.region
        if rtype == "AWS::S3::Bucket":
            attrs = {"Arn": f"arn:aws:s3:::{phys}", "DomainName": f"{phys}.s3.amazonaws.com"}
        elif rtype == "AWS::DynamoDB::Table":
            table = self.clients("dynamodb").describe_table(TableName=phys)["Table"]
            attrs = {"Arn": table["TableArn"]}
            if "LatestStreamArn" in table:
                attrs["StreamArn"] = table["LatestStreamArn"]
        elif rtype == "AWS::SNS::Topic":
            attrs = {"TopicArn": phys, "TopicName": phys.rsplit(":", 1)[1]}
        elif rtype == "AWS::SQS::Queue":
            name = phys.rstrip("/").rsplit("/", 1)[1]
            attrs = {"Arn": f"arn:aws:sqs:{region}:{acct}:{name}", "QueueName": name, "QueueUrl": phys}
        elif rtype == "AWS::Logs::LogGroup":
            attrs = {"Arn": f"arn:aws:logs:{region}:{acct}:log-group:{phys}:*"}
        else:
            attrs = {}
        self._d.attributes[lid] = attrs
        return attrs

    def _set(self, lid: str, physical: str, **attributes: str) -> None:
        self._d.physical[lid] = physical
        self._d.attributes[lid] = attributes

    def _name(self, lid: str, given: str | None, limit: int = 64) -> str:
        return given or f"{self._d.stack_name}-{lid}"[:limit]

    # ---------------------------------------------------------------- creators
    def _role(self, lid: str, p: dict[str, Any]) -> None:
        iam = self.clients("iam")
        name = self._name(lid, p.get("RoleName"))
        role = iam.create_role(
            RoleName=name,
            Path=p.get("Path", "/"),
            AssumeRolePolicyDocument=json.dumps(p["AssumeRolePolicyDocument"]),
        )["Role"]
        for policy in p.get("Policies", []):
            # IAM defaults a missing Version; moto refuses the document (SAM's policy templates omit it).
            document = {"Version": "2012-10-17", **policy["PolicyDocument"]}
            iam.put_role_policy(
                RoleName=name, PolicyName=policy["PolicyName"], PolicyDocument=json.dumps(document)
            )
        # ManagedPolicyArns (AWS-managed) are not loaded into moto's IAM; IAM is not enforced locally anyway.
        self._set(lid, name, Arn=role["Arn"], RoleId=role["RoleId"])

    def _layer(self, lid: str, p: dict[str, Any]) -> None:
        content = p["Content"]
        uri = f"s3://{content['S3Bucket']}/{content['S3Key']}"
        folder = self._code_dirs.get(uri)
        if folder is None:
            raise DeployError(f"{lid}: layer content {uri} is not a local folder")
        arn = self.clients("lambda").publish_layer_version(
            LayerName=p.get("LayerName", lid),
            Content={"ZipFile": _tiny_zip()},
            CompatibleRuntimes=p.get("CompatibleRuntimes", []),
        )["LayerVersionArn"]
        self._layer_dirs[arn] = folder
        self._set(lid, arn)

    def _function(self, lid: str, p: dict[str, Any]) -> None:
        code = p.get("Code", {})
        uri = f"s3://{code.get('S3Bucket')}/{code.get('S3Key')}"
        folder = self._code_dirs.get(uri)
        if folder is None:
            raise DeployError(f"{lid}: code {uri} is not a local folder (only local CodeUri is supported)")
        name = self._name(lid, p.get("FunctionName"))
        env = {k: str(v) for k, v in (p.get("Environment", {}).get("Variables") or {}).items()}
        layers = p.get("Layers", [])
        missing = [arn for arn in layers if arn not in self._layer_dirs]
        if missing:
            raise DeployError(f"{lid}: layers {missing} are not defined in this template")
        fn = self.clients("lambda").create_function(
            FunctionName=name,
            Runtime=p.get("Runtime", "python3.11"),
            Role=p["Role"],
            Handler=p["Handler"],
            Code={"ZipFile": _tiny_zip()},
            Timeout=int(p.get("Timeout", 3)),
            MemorySize=int(p.get("MemorySize", 128)),
            Environment={"Variables": env},
            Layers=layers,
        )
        spec = FunctionSpec(
            name=name,
            arn=fn["FunctionArn"],
            code_dir=folder,
            handler=p["Handler"],
            layer_dirs=[self._layer_dirs[a] for a in layers],
            environment=env,
            timeout=float(p.get("Timeout", 3)),
            memory_mb=int(p.get("MemorySize", 128)),
        )
        self.runtime.register(spec)
        self._d.functions[lid] = spec
        self._set(lid, name, Arn=fn["FunctionArn"])

    def _permission(self, lid: str, p: dict[str, Any]) -> None:
        kwargs = {
            "FunctionName": p["FunctionName"],
            "StatementId": lid,
            "Action": p["Action"],
            "Principal": p["Principal"],
        }
        if "SourceArn" in p:
            kwargs["SourceArn"] = p["SourceArn"]
        self.clients("lambda").add_permission(**kwargs)
        self._set(lid, lid)

    def _state_machine(self, lid: str, p: dict[str, Any]) -> None:
        if "DefinitionString" in p:
            definition = p["DefinitionString"]
        elif "Definition" in p:
            definition = json.dumps(p["Definition"])
        else:
            raise DeployError(
                f"{lid}: no DefinitionString or Definition (DefinitionS3Location is not supported)"
            )
        for key, value in (p.get("DefinitionSubstitutions") or {}).items():
            definition = definition.replace("${" + key + "}", str(value))
        try:
            json.loads(definition)
        except json.JSONDecodeError as exc:
            raise DeployError(f"{lid}: the definition is not valid JSON after substitutions: {exc}") from None
        name = self._name(lid, p.get("StateMachineName"), 80)
        arn = self.clients("stepfunctions").create_state_machine(
            name=name, definition=definition, roleArn=p["RoleArn"], type=p.get("StateMachineType", "STANDARD")
        )["stateMachineArn"]
        self._set(lid, arn, Arn=arn, Name=name)

    def _rule(self, lid: str, p: dict[str, Any]) -> None:
        events = self.clients("events")
        name = self._name(lid, p.get("Name"))
        kwargs: dict[str, Any] = {"Name": name, "State": p.get("State", "ENABLED")}
        if "EventPattern" in p:
            kwargs["EventPattern"] = json.dumps(p["EventPattern"])
        if "ScheduleExpression" in p:
            kwargs["ScheduleExpression"] = p["ScheduleExpression"]
        if "EventBusName" in p:
            kwargs["EventBusName"] = p["EventBusName"]
        arn = events.put_rule(**kwargs)["RuleArn"]
        targets = []
        for t in p.get("Targets", []):
            target = {
                k: t[k] for k in ("Id", "Arn", "RoleArn", "Input", "InputPath", "InputTransformer") if k in t
            }
            targets.append(target)
        if targets:
            bus = {"EventBusName": p["EventBusName"]} if "EventBusName" in p else {}
            events.put_targets(Rule=name, Targets=targets, **bus)
        self._set(lid, name, Arn=arn)

    def _rest_api(self, lid: str, p: dict[str, Any]) -> None:
        api_id = self.clients("apigateway").create_rest_api(name=p.get("Name", lid))["id"]
        api = RestApi(logical_id=lid, api_id=api_id)
        for path, methods in (p.get("Body", {}).get("paths") or {}).items():
            for method, spec in methods.items():
                integration = spec.get("x-amazon-apigateway-integration", {})
                uri = integration.get("uri", "")
                if integration.get("type") != "aws_proxy" or ":function:" not in uri:
                    raise DeployError(
                        f"{lid}: {method.upper()} {path}: only Lambda proxy integrations run locally"
                    )
                function = uri.split(":function:", 1)[1].split("/", 1)[0].split(":", 1)[0]
                m = "ANY" if method == "x-amazon-apigateway-any-method" else method.upper()
                api.routes.append(Route(method=m, path=path, function=function))
                if any("api_key" in sec for sec in spec.get("security", [])):
                    api.api_key_required.add((m, path))
        self._d.apis[lid] = api
        root = self.clients("apigateway").get_resources(restApiId=api_id)["items"][0]["id"]
        self._set(lid, api_id, RootResourceId=root)

    def _api_deployment(self, lid: str, p: dict[str, Any]) -> None:
        self._set(lid, f"{lid}-local")

    def _api_stage(self, lid: str, p: dict[str, Any]) -> None:
        for api in self._d.apis.values():
            if api.api_id == p["RestApiId"]:
                api.stage = p["StageName"]
        self._set(lid, p["StageName"])

    def _model_package_group(self, lid: str, p: dict[str, Any]) -> None:
        name = p["ModelPackageGroupName"]
        kwargs = {"ModelPackageGroupName": name}
        if "ModelPackageGroupDescription" in p:
            kwargs["ModelPackageGroupDescription"] = p["ModelPackageGroupDescription"]
        arn = self.clients("sagemaker").create_model_package_group(**kwargs)["ModelPackageGroupArn"]
        self._set(lid, arn, ModelPackageGroupArn=arn)

    def _kms_key(self, lid: str, p: dict[str, Any]) -> None:
        key = (
            self.clients("kms").create_key(
                Description=p.get("Description", lid),
                Policy=json.dumps(p["KeyPolicy"]) if "KeyPolicy" in p else None,
            )
            if "KeyPolicy" in p
            else self.clients("kms").create_key(Description=p.get("Description", lid))
        )
        meta = key["KeyMetadata"]
        self._set(lid, meta["KeyId"], Arn=meta["Arn"], KeyId=meta["KeyId"])

    def _kms_alias(self, lid: str, p: dict[str, Any]) -> None:
        self.clients("kms").create_alias(AliasName=p["AliasName"], TargetKeyId=p["TargetKeyId"])
        self._set(lid, p["AliasName"])

    def _bucket_policy(self, lid: str, p: dict[str, Any]) -> None:
        document = dict(p["PolicyDocument"])
        # The local cloud answers over plain HTTP and moto enforces a bucket policy's Deny: a statement that
        # refuses requests without TLS would refuse every local request, so it is left out here (and only here).
        document["Statement"] = [s for s in document.get("Statement", []) if not _denies_plain_http(s)]
        if document["Statement"]:
            self.clients("s3").put_bucket_policy(Bucket=p["Bucket"], Policy=json.dumps(document))
        self._set(lid, p["Bucket"])

    def _alarm(self, lid: str, p: dict[str, Any]) -> None:
        name = self._name(lid, p.get("AlarmName"), 255)
        allowed = {
            "AlarmDescription",
            "ActionsEnabled",
            "OKActions",
            "AlarmActions",
            "InsufficientDataActions",
            "MetricName",
            "Namespace",
            "Statistic",
            "ExtendedStatistic",
            "Dimensions",
            "Period",
            "Unit",
            "EvaluationPeriods",
            "DatapointsToAlarm",
            "Threshold",
            "ComparisonOperator",
            "TreatMissingData",
            "Metrics",
        }
        kwargs = {k: v for k, v in p.items() if k in allowed}
        for k in ("Period", "EvaluationPeriods", "DatapointsToAlarm"):
            if k in kwargs:
                kwargs[k] = int(kwargs[k])
        if "Threshold" in kwargs:
            kwargs["Threshold"] = float(kwargs["Threshold"])
        self.clients("cloudwatch").put_metric_alarm(AlarmName=name, **kwargs)
        arn = f"arn:aws:cloudwatch:{self.region}:{self.account_id}:alarm:{name}"
        self._set(lid, name, Arn=arn)

    def _sns_subscription(self, lid: str, p: dict[str, Any]) -> None:
        arn = self.clients("sns").subscribe(
            TopicArn=p["TopicArn"], Protocol=p["Protocol"], Endpoint=p["Endpoint"]
        )
        self._set(lid, arn["SubscriptionArn"])

    def _api_key(self, lid: str, p: dict[str, Any]) -> None:
        kwargs = {"name": p.get("Name", lid), "enabled": p.get("Enabled", True) in (True, "true")}
        if "Value" in p:
            kwargs["value"] = p["Value"]
        key = self.clients("apigateway").create_api_key(**kwargs)
        self._set(lid, key["id"], APIKeyId=key["id"])

    def _usage_plan(self, lid: str, p: dict[str, Any]) -> None:
        stages = [{"apiId": s["ApiId"], "stage": s["Stage"]} for s in p.get("ApiStages", [])]
        kwargs: dict[str, Any] = {"name": p.get("UsagePlanName", lid), "apiStages": stages}
        if "Throttle" in p:
            t = p["Throttle"]
            kwargs["throttle"] = {
                "burstLimit": int(t.get("BurstLimit", 0)),
                "rateLimit": float(t.get("RateLimit", 0)),
            }
        plan = self.clients("apigateway").create_usage_plan(**kwargs)
        self._set(lid, plan["id"], Id=plan["id"])

    def _usage_plan_key(self, lid: str, p: dict[str, Any]) -> None:
        self.clients("apigateway").create_usage_plan_key(
            usagePlanId=p["UsagePlanId"], keyId=p["KeyId"], keyType=p.get("KeyType", "API_KEY")
        )
        self._set(lid, f"{p['UsagePlanId']}:{p['KeyId']}")

    def _queue_policy(self, lid: str, p: dict[str, Any]) -> None:
        sqs = self.clients("sqs")
        for url in p["Queues"]:
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(p["PolicyDocument"])})
        self._set(lid, lid)

    def _record_only(self, lid: str, p: dict[str, Any]) -> None:
        """Resources with no effect on the local cloud (IAM is not enforced): recorded so references resolve."""
        self._set(lid, f"{self._d.stack_name}-{lid}")

    CREATORS: dict[str, Any] = {
        **dict.fromkeys(VIA_CLOUDFORMATION, _own_stack),
        "AWS::IAM::Role": _role,
        "AWS::IAM::Policy": _record_only,
        "AWS::IAM::ManagedPolicy": _record_only,
        # The account's CloudWatch role for API Gateway logging: the local API writes no access logs.
        "AWS::ApiGateway::Account": _record_only,
        "AWS::Lambda::LayerVersion": _layer,
        "AWS::Lambda::Function": _function,
        "AWS::Lambda::Permission": _permission,
        "AWS::StepFunctions::StateMachine": _state_machine,
        "AWS::Events::Rule": _rule,
        "AWS::ApiGateway::RestApi": _rest_api,
        "AWS::ApiGateway::Deployment": _api_deployment,
        "AWS::ApiGateway::Stage": _api_stage,
        "AWS::ApiGateway::ApiKey": _api_key,
        "AWS::ApiGateway::UsagePlan": _usage_plan,
        "AWS::ApiGateway::UsagePlanKey": _usage_plan_key,
        "AWS::SageMaker::ModelPackageGroup": _model_package_group,
        "AWS::KMS::Key": _kms_key,
        "AWS::KMS::Alias": _kms_alias,
        "AWS::S3::BucketPolicy": _bucket_policy,
        "AWS::CloudWatch::Alarm": _alarm,
        "AWS::SNS::Subscription": _sns_subscription,
        "AWS::SQS::QueuePolicy": _queue_policy,
    }
