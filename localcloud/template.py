"""Read template.yaml and samconfig.toml, and turn the SAM template into plain CloudFormation (aws-sam-translator).

What `sam deploy` does before CloudFormation sees the template, done offline: the CloudFormation YAML tags are
read as their long forms, local CodeUri / ContentUri / DefinitionUri paths are remembered and replaced with S3
locations (the deployer runs the local folders), and the SAM transform is applied.
"""

from __future__ import annotations

import copy
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class TemplateError(Exception):
    """The template (or samconfig.toml) cannot be read or transformed; the message says where and why."""


class _CfnLoader(yaml.SafeLoader):
    pass


def _tag(name: str):
    def construct(loader: _CfnLoader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if name == "Fn::GetAtt" and isinstance(value, str):
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}

    return construct


for _short, _long in {
    "Ref": "Ref",
    "Condition": "Condition",
    **{
        f: f"Fn::{f}"
        for f in (
            "GetAtt Sub Join Select Split If Equals Not And Or FindInMap GetAZs Base64 ImportValue Cidr "
            "Length ToJsonString"
        ).split()
    },
}.items():
    _CfnLoader.add_constructor(f"!{_short}", _tag(_long))


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise TemplateError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass with CFN tags only
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict) or not data["Resources"]:
        raise TemplateError(f"{path} has no Resources mapping: not a CloudFormation/SAM template")
    return data


def load_samconfig(path: Path, profile: str = "local") -> dict[str, str]:
    """Parameter overrides from samconfig.toml's [PROFILE.deploy.parameters] (a string 'K=V K=V' or a list)."""
    if not path.exists():
        return {}
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError(f"{path} is not valid TOML: {exc}") from None
    params = config.get(profile, {}).get("deploy", {}).get("parameters")
    if params is None:
        raise TemplateError(f"{path} has no [{profile}.deploy.parameters] section")
    overrides = params.get("parameter_overrides", [])
    if isinstance(overrides, str):
        overrides = overrides.split()
    values: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise TemplateError(f"{path}: parameter override {item!r} is not KEY=VALUE")
        values[key] = value.strip('"')
    return values


@dataclass
class Transformed:
    """The CloudFormation template after the SAM transform, and the local folders the S3 locations stand for."""

    template: dict[str, Any]
    parameters: dict[str, str]
    code_dirs: dict[str, Path] = field(default_factory=dict)  # "s3://bucket/key" placeholder -> local folder


_LOCAL_CODE_BUCKET = "localcloud-code"


def sam_transform(template_path: Path, parameters: dict[str, str] | None = None) -> Transformed:
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.translator.transform import transform

    template = load_yaml(template_path)
    root = template_path.parent
    declared = template.get("Parameters", {})
    unknown = sorted(set(parameters or {}) - set(declared))
    if unknown:
        raise TemplateError(f"parameters not declared in {template_path.name}: {', '.join(unknown)}")
    values = {k: str(v.get("Default")) for k, v in declared.items() if "Default" in v}
    values.update(parameters or {})
    missing = sorted(set(declared) - set(values))
    if missing:
        raise TemplateError(
            f"parameters without a value (no Default, no samconfig override): {', '.join(missing)}"
        )

    code_dirs: dict[str, Path] = {}
    template = copy.deepcopy(template)
    for logical_id, resource in template["Resources"].items():
        props = resource.get("Properties") or {}
        rtype = resource.get("Type")
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str) and not props[key].startswith("s3://"):
                folder = (root / props[key]).resolve()
                if not folder.is_dir():
                    raise TemplateError(f"{logical_id}.{key}: folder {props[key]} does not exist")
                uri = f"s3://{_LOCAL_CODE_BUCKET}/{logical_id}"
                code_dirs[uri] = folder
                props[key] = uri
        if rtype == "AWS::Serverless::StateMachine" and isinstance(props.get("DefinitionUri"), str):
            file = root / props.pop("DefinitionUri")
            try:
                props["Definition"] = json.loads(file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise TemplateError(f"{logical_id}.DefinitionUri: {file}: {exc}") from None

    class _OfflinePolicies:
        """Managed policy names resolve to AWS's ARN form; the template uses ARNs, so none are looked up."""

        def load(self) -> dict[str, str]:
            return {}

    try:
        cfn = transform(template, values, _OfflinePolicies())
    except InvalidDocumentException as exc:
        causes = "; ".join(str(c) for c in exc.causes)
        raise TemplateError(f"SAM transform failed: {causes}") from None
    return Transformed(template=cfn, parameters=values, code_dirs=code_dirs)
