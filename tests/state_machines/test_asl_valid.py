"""Every state machine file is valid ASL and keeps the house rules.

cfn-lint validates ASL (its JSON schema and rules E3601...) only inside AWS::StepFunctions::StateMachine, not inside
AWS::Serverless::StateMachine; so each file is linted wrapped in a plain StepFunctions resource, and the house rules
(reachable states, defined targets, Retry/Catch on every Task, substitutions declared in the template) on top.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cfnlint.api
import pytest

from localcloud.template import load_yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "state_machines").glob("*.asl.json"))
TEMPLATE = load_yaml(ROOT / "template.yaml")


def _machines_using(file: Path) -> list[dict]:
    rel = file.relative_to(ROOT).as_posix()
    return [
        r["Properties"]
        for r in TEMPLATE["Resources"].values()
        if r["Type"] == "AWS::Serverless::StateMachine" and r["Properties"].get("DefinitionUri") == rel
    ]


def _states(definition: dict) -> dict[str, dict]:
    """All states, nested ones (Parallel branches, Map iterators) included."""
    found = {}
    for name, state in definition["States"].items():
        found[name] = state
        for branch in state.get("Branches", []):
            found.update(_states(branch))
        for key in ("Iterator", "ItemProcessor"):
            if key in state:
                found.update(_states(state[key]))
    return found


def test_there_are_state_machines():
    assert FILES


@pytest.mark.parametrize("file", FILES, ids=lambda f: f.name)
def test_cfn_lint_finds_no_asl_errors(file: Path):
    definition = json.loads(file.read_text())
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {
            "Machine": {
                "Type": "AWS::StepFunctions::StateMachine",
                "Properties": {"RoleArn": "arn:aws:iam::123456789012:role/r", "Definition": definition},
            }
        },
    }
    matches = cfnlint.api.lint(json.dumps(template))
    assert [str(m) for m in matches] == []


@pytest.mark.parametrize("file", FILES, ids=lambda f: f.name)
def test_every_state_is_reachable_and_every_target_exists(file: Path):
    definition = json.loads(file.read_text())

    def check(machine: dict) -> None:
        states = machine["States"]
        assert machine["StartAt"] in states
        seen, todo = set(), [machine["StartAt"]]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            state = states[name]
            targets = [state.get("Next"), state.get("Default")]
            targets += [c.get("Next") for c in state.get("Choices", [])]
            targets += [c.get("Next") for c in state.get("Catch", [])]
            for t in filter(None, targets):
                assert t in states, f"{file.name}: {name} -> {t}, which does not exist"
                todo.append(t)
            for branch in state.get("Branches", []):
                check(branch)
            for key in ("Iterator", "ItemProcessor"):
                if key in state:
                    check(state[key])
        assert seen == set(states), f"{file.name}: unreachable states {set(states) - seen}"

    check(definition)


@pytest.mark.parametrize("file", FILES, ids=lambda f: f.name)
def test_every_task_has_retry_catch_and_a_timeout(file: Path):
    for name, state in _states(json.loads(file.read_text())).items():
        if state["Type"] == "Task":
            assert state.get("Retry"), f"{file.name}: Task {name} has no Retry"
            assert state.get("Catch"), f"{file.name}: Task {name} has no Catch"
            assert "TimeoutSeconds" in state or "TimeoutSecondsPath" in state, f"{file.name}: {name} no timeout"


@pytest.mark.parametrize("file", FILES, ids=lambda f: f.name)
def test_every_substitution_is_declared_by_the_template(file: Path):
    used = set(re.findall(r"\$\{(\w+)\}", file.read_text()))
    machines = _machines_using(file)
    assert machines, f"{file.name} is not used by template.yaml"
    for props in machines:
        declared = set(props.get("DefinitionSubstitutions", {}))
        assert used == declared, f"{file.name}: used {sorted(used)}, declared {sorted(declared)}"
