"""A validator of KServe resources against KServe's schemas for its CRDs: the OpenAPI models that the `kserve`
package generates from them, with the Kubernetes client's models for the core types inside them. Run as a program
(`python -m tests.deploy.kserve_schema`), it reads a JSON list of resources on stdin and writes a JSON list of their
problems: `kserve` registers its own copy of the OIP v2 protobuf messages in the process-wide descriptor pool,
which clashes with tritonclient's in the test process, so the tests call it in a process of its own."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

RESOURCES = {  # kind -> (apiVersion, the kserve model class's name)
    "ServingRuntime": ("serving.kserve.io/v1alpha1", "V1alpha1ServingRuntime"),
    "ClusterServingRuntime": ("serving.kserve.io/v1alpha1", "V1alpha1ClusterServingRuntime"),
    "InferenceService": ("serving.kserve.io/v1beta1", "V1beta1InferenceService"),
}
PRIMITIVES: dict[str, Any] = {"str": str, "bool": bool, "int": int, "float": (int, float), "object": object,
                              "datetime": str}


def model_class(name: str) -> Any:
    import kserve.models
    import kubernetes.client.models

    found = getattr(kserve.models, name, None) or getattr(kubernetes.client.models, name, None)
    assert found is not None, f"no schema for {name}"
    return found


def problems(value: Any, type_name: str, where: str) -> list[str]:
    """What is wrong with `value` as a `type_name` (an OpenAPI model type string), each with its path."""
    if value is None:
        return []
    if type_name in PRIMITIVES:
        expected = PRIMITIVES[type_name]
        if (isinstance(value, bool) and type_name in ("int", "float")) or not isinstance(value, expected):
            return [f"{where}: {value!r} is not a {type_name}"]
        return []
    listed = re.fullmatch(r"[lL]ist\[(.+)\]", type_name)
    if listed:
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [p for i, item in enumerate(value) for p in problems(item, listed[1], f"{where}[{i}]")]
    mapped = re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name)
    if mapped:
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [p for k, item in value.items() for p in problems(item, mapped[1] or mapped[2], f"{where}.{k}")]
    cls = model_class(type_name)
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} object"]
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    found = [f"{where}.{key}: not a field of {type_name}" for key in value if key not in by_json]
    for key, item in value.items():
        if key in by_json:
            found += problems(item, cls.openapi_types[by_json[key]], f"{where}.{key}")
    if not found:
        try:  # the models' own checks: required fields and enumerations
            if hasattr(cls, "model_validate"):  # the Kubernetes client's models are pydantic models
                cls.model_validate(value)
            else:
                from kserve.configuration import Configuration

                cls(**{by_json[k]: v for k, v in value.items()}, local_vars_configuration=Configuration())
        except (ValueError, TypeError) as exc:
            found.append(f"{where}: {str(exc).splitlines()[0]} {str(exc).splitlines()[1:3]}")
    return found


def resource_problems(doc: dict[str, Any]) -> list[str]:
    kind = doc.get("kind")
    if kind not in RESOURCES:
        return [f"unexpected kind {kind!r}"]
    api_version, schema = RESOURCES[kind]
    if doc.get("apiVersion") != api_version:
        return [f"{kind}: apiVersion {doc.get('apiVersion')!r}, expected {api_version}"]
    name = doc.get("metadata", {}).get("name", "?")
    return problems(doc, schema, f"{kind}/{name}")



if __name__ == "__main__":
    json.dump([resource_problems(doc) for doc in json.load(sys.stdin)], sys.stdout)
