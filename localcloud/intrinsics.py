"""CloudFormation intrinsic functions and pseudo parameters, resolved against what the deployer has created."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any


class IntrinsicError(Exception):
    """An intrinsic function cannot be resolved (unknown resource, attribute or function)."""


NO_VALUE = object()
_SUB = re.compile(r"\$\{([^}!][^}]*)\}")


class Resolver:
    """Resolves a template value; `ref(name)` and `get_att(name, attr)` come from the deployer."""

    def __init__(
        self,
        parameters: dict[str, Any],
        conditions: dict[str, Any],
        mappings: dict[str, Any],
        ref: Callable[[str], Any],
        get_att: Callable[[str, str], Any],
        pseudo: dict[str, str],
    ) -> None:
        self.parameters = parameters
        self.mappings = mappings
        self.ref = ref
        self.get_att = get_att
        self.pseudo = pseudo
        self._condition_defs = conditions
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            if name not in self._condition_defs:
                raise IntrinsicError(f"unknown condition {name!r}")
            self._conditions[name] = bool(self.resolve(self._condition_defs[name]))
        return self._conditions[name]

    def _ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.parameters:
            return self.parameters[name]
        return self.ref(name)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self._ref(arg)
            if key == "Condition" and isinstance(arg, str):
                return self.condition(arg)
            if key.startswith("Fn::"):
                return self._function(key, arg)
        out = {}
        for k, v in value.items():
            r = self.resolve(v)
            if r is not NO_VALUE:
                out[k] = r
        return out

    def _function(self, name: str, arg: Any) -> Any:
        if name == "Fn::GetAtt":
            logical, attr = arg if isinstance(arg, list) else arg.split(".", 1)
            return self.get_att(logical, self.resolve(attr))
        if name == "Fn::Sub":
            if isinstance(arg, str):
                template, variables = arg, {}
            else:
                template, variables = arg[0], self.resolve(arg[1])
            return self._sub(template, variables)
        if name == "Fn::Join":
            sep, items = arg
            return self.resolve(sep).join(str(self._scalar(i)) for i in self.resolve(items))
        if name == "Fn::Select":
            index, items = self.resolve(arg)
            return items[int(index)]
        if name == "Fn::Split":
            sep, text = self.resolve(arg)
            return text.split(sep)
        if name == "Fn::If":
            cond, yes, no = arg
            return self.resolve(yes if self.condition(cond) else no)
        if name == "Fn::Equals":
            a, b = self.resolve(arg)
            return str(a) == str(b)
        if name == "Fn::Not":
            return not self.resolve(arg[0])
        if name == "Fn::And":
            return all(self.resolve(a) for a in arg)
        if name == "Fn::Or":
            return any(self.resolve(a) for a in arg)
        if name == "Fn::FindInMap":
            m, k1, k2 = self.resolve(arg)
            return self.mappings[m][k1][k2]
        if name == "Fn::GetAZs":
            region = self.resolve(arg) or self.pseudo["AWS::Region"]
            return [f"{region}{z}" for z in "abc"]
        if name == "Fn::ToJsonString":
            return json.dumps(self.resolve(arg))
        if name == "Fn::Length":
            return len(self.resolve(arg))
        raise IntrinsicError(f"intrinsic function {name} is not supported by the local cloud")

    @staticmethod
    def _scalar(v: Any) -> Any:
        return json.dumps(v) if isinstance(v, (dict, list)) else v

    def _sub(self, template: str, variables: dict[str, Any]) -> str:
        def replace(m: re.Match[str]) -> str:
            expr = m.group(1).strip()
            if expr in variables:
                return str(variables[expr])
            if "." in expr and not expr.startswith("AWS::"):
                logical, attr = expr.split(".", 1)
                return str(self.get_att(logical, attr))
            return str(self._ref(expr))

        return _SUB.sub(replace, template).replace("${!", "${")


def references(value: Any) -> set[str]:
    """Logical ids a value refers to through Ref, GetAtt or Sub (pseudo parameters included; filter later)."""
    found: set[str] = set()
    if isinstance(value, list):
        for v in value:
            found |= references(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            if k == "Ref" and isinstance(v, str):
                found.add(v)
            elif k == "Fn::GetAtt":
                found.add(v[0] if isinstance(v, list) else v.split(".", 1)[0])
            elif k == "Fn::Sub":
                template = v if isinstance(v, str) else v[0]
                for expr in _SUB.findall(template):
                    found.add(expr.strip().split(".", 1)[0])
                if not isinstance(v, str):
                    found |= references(v[1])
            else:
                found |= references(v)
    return found
