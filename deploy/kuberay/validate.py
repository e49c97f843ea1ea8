"""Validate Kubernetes manifests against the Kubernetes and KubeRay schemas, offline.

    python deploy/kuberay/validate.py                      # every manifest in deploy/kuberay/
    python deploy/kuberay/validate.py FILE... --kubernetes-version 1.35

Core and apps kinds (Namespace, Secret, PersistentVolumeClaim, Service, Deployment, ConfigMap) are
checked against the strict JSON schemas bundled by the `kubernetes-validate` package; RayCluster and
RayJob against the KubeRay CRDs' OpenAPI v3 schemas in schemas/ (see schemas/README.md), converted
to JSON Schema the way the API server reads them with strict field validation: an object with
listed properties rejects unknown fields, int32 fields are bounded. Resource quantities are also
parsed (the bundled Kubernetes schema accepts any string). A Kustomization is checked for the files
it lists. CEL rules (x-kubernetes-validations) are not evaluated.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource

HERE = Path(__file__).resolve().parent
SCHEMAS = HERE / "schemas"
#: Oldest Kubernetes the manifests target (KubeRay v1.5 supports 1.28+; 1.33 is the oldest still
#: in upstream support at the time of writing).
KUBERNETES_VERSION = "1.33"
DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
KUBERAY_BASE = "https://ctplatform.invalid/kuberay/"
KUBERAY_KINDS: dict[tuple[str, str], str] = {
    ("ray.io/v1", "RayCluster"): "raycluster.v1.yaml",
    ("ray.io/v1", "RayJob"): "rayjob.v1.yaml",
}
KUSTOMIZATION = ("kustomize.config.k8s.io/v1beta1", "Kustomization")
KUSTOMIZE_COMPONENT = ("kustomize.config.k8s.io/v1alpha1", "Component")
#: The API server's quantity grammar (also the pattern in KubeRay's CRDs).
QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def kubernetes_schema_dir(version: str) -> Path:
    """The strict schema folder of `kubernetes-validate` for a Kubernetes minor version."""
    import kubernetes_validate

    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    path = root / f"v{version}.0-local-strict"
    if not path.is_dir():
        have = sorted(p.name.split("-")[0] for p in root.glob("v*-local-strict"))
        raise ValueError(f"no Kubernetes {version} schemas in kubernetes-validate; available: {have}")
    return path


def openapi_to_jsonschema(node: Any) -> Any:
    """A CRD's structural OpenAPI v3 schema as JSON Schema (2020-12), strict about unknown fields."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-validations")}
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if "properties" in node and "additionalProperties" not in node and not node.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False  # the API server rejects unknown fields (strict field validation)
    if node.get("type") == "integer" and node.get("format") in _INT_BOUNDS:
        lo, hi = _INT_BOUNDS[node["format"]]
        out.setdefault("minimum", lo)
        out.setdefault("maximum", hi)
    return out


def _kuberay_resource(filename: str) -> Resource:
    doc = yaml.safe_load((SCHEMAS / filename).read_text())
    schema = openapi_to_jsonschema(doc["openAPIV3Schema"])
    # Every object's metadata is validated as ObjectMeta by the API server.
    schema["properties"]["metadata"] = {"$ref": f"{DEFINITIONS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    schema["properties"]["apiVersion"] = {"const": f"{doc['group']}/{doc['version']}"}
    schema["properties"]["kind"] = {"const": doc["kind"]}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    schema["$defs"] = openapi_to_jsonschema(doc.get("$defs", {}))
    schema["$id"] = KUBERAY_BASE + filename
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return Resource.from_contents(schema)


@lru_cache(maxsize=4)
def _registry(version: str) -> Registry:
    folder = kubernetes_schema_dir(version)
    definitions = json.loads((folder / "_definitions.json").read_text())
    resources = [(DEFINITIONS_ID, Resource.from_contents(definitions))]
    resources += [(KUBERAY_BASE + f, _kuberay_resource(f)) for f in KUBERAY_KINDS.values()]
    return Registry().with_resources(resources).crawl()


@lru_cache(maxsize=64)
def _kubernetes_kind_schema(version: str, api_version: str, kind: str) -> dict[str, Any]:
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # apps/v1 -> apps-v1
    path = kubernetes_schema_dir(version) / f"{kind.lower()}-{group_version}.json"
    if not path.is_file():
        raise LookupError(f"no schema for kind {kind} ({api_version}) in Kubernetes {version}")
    return json.loads(path.read_text())


def schema_for(api_version: str, kind: str, version: str = KUBERNETES_VERSION) -> dict[str, Any]:
    """The JSON Schema a document of this apiVersion/kind must satisfy."""
    if (api_version, kind) in KUBERAY_KINDS:
        return _registry(version).contents(KUBERAY_BASE + KUBERAY_KINDS[(api_version, kind)])
    return _kubernetes_kind_schema(version, api_version, kind)


def _quantities(doc: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every value under a `limits`/`requests`/`storage`-style quantity map."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            here = f"{path}.{k}" if path else k
            if k in ("limits", "requests") and isinstance(v, dict):
                for name, q in v.items():
                    yield f"{here}.{name}", q
            else:
                yield from _quantities(v, here)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _quantities(v, f"{path}[{i}]")


def validate_document(doc: dict[str, Any], version: str = KUBERNETES_VERSION, base: Path | None = None) -> list[str]:
    """Every schema violation of one manifest document, as readable messages (empty: valid)."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object: needs apiVersion and kind"]
    api_version, kind = doc["apiVersion"], doc["kind"]
    if (api_version, kind) in (KUSTOMIZATION, KUSTOMIZE_COMPONENT):
        return _check_kustomization(doc, base or HERE)
    try:
        schema = schema_for(api_version, kind, version)
    except LookupError as e:
        return [str(e)]
    validator = jsonschema.Draft202012Validator(schema, registry=_registry(version))
    name = (doc.get("metadata") or {}).get("name", "?")
    errors = [
        f"{kind}/{name}: {'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
    errors += [
        f"{kind}/{name}: {where}: {q!r} is not a Kubernetes quantity (e.g. 500m, 4, 16Gi)"
        for where, q in _quantities(doc)
        if not QUANTITY.match(str(q))
    ]
    errors += [f"{kind}/{name}: {msg}" for msg in _extended_resource_errors(doc)]
    return errors


def _resource_blocks(doc: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            here = f"{path}.{k}" if path else k
            if k == "resources" and isinstance(v, dict) and ({"limits", "requests"} & v.keys()):
                yield here, v
            else:
                yield from _resource_blocks(v, here)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _resource_blocks(v, f"{path}[{i}]")


def _extended_resource_errors(doc: dict[str, Any]) -> list[str]:
    """The API server's rule for extended resources (GPUs): whole numbers, and requests == limits."""
    errors = []
    for where, res in _resource_blocks(doc):
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        for name in sorted(set(limits) | set(requests)):
            if "/" not in name or name.startswith(("kubernetes.io/", "requests.")):
                continue
            for kind, value in (("limits", limits.get(name)), ("requests", requests.get(name))):
                if value is not None and not re.fullmatch(r"[0-9]+", str(value)):
                    errors.append(f"{where}.{kind}.{name}: {value!r} must be a whole number")
            if name in requests and name not in limits:
                errors.append(f"{where}: {name} is requested but has no limit (extended resources need both)")
            elif name in requests and str(requests[name]) != str(limits[name]):
                errors.append(f"{where}: {name} request {requests[name]!r} differs from its limit {limits[name]!r}")
    return errors


def _check_kustomization(doc: dict[str, Any], base: Path) -> list[str]:
    errors = []
    for key in ("resources", "components"):
        for entry in doc.get(key) or []:
            if "://" not in entry and not (base / entry).exists():
                errors.append(f"Kustomization: {key} entry {entry!r} does not exist beside kustomization.yaml")
    # secretGenerator files are generated by make_secrets.py and git-ignored: they must stay inside
    # the kustomization folder (kustomize refuses others) and never be committed.
    for gen in doc.get("secretGenerator") or []:
        for entry in list(gen.get("envs") or []) + list(gen.get("files") or []):
            path = entry.split("=", 1)[-1]
            if Path(path).is_absolute() or ".." in Path(path).parts:
                errors.append(f"Kustomization: secretGenerator {gen.get('name')!r}: {entry!r} is outside the folder")
    return errors


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of one manifest file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifest_files(folder: Path = HERE) -> list[Path]:
    """The manifests of deploy/kuberay and its subfolders (jobs/<stage>/, images/); schemas/ holds
    schemas and secrets/ generated secrets, not manifests."""
    return sorted(p for p in folder.rglob("*.yaml")
                  if p.is_file() and not {"schemas", "secrets"} & set(p.relative_to(folder).parts[:-1]))


def validate_file(path: Path, version: str = KUBERNETES_VERSION) -> list[str]:
    try:
        docs = load_documents(path)
    except yaml.YAMLError as e:
        return [f"{path.name}: not valid YAML: {e}"]
    if not docs:
        return [f"{path.name}: no documents"]
    return [f"{path.name}: {msg}" for doc in docs for msg in validate_document(doc, version, path.parent)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="manifests (default: every deploy/kuberay/*.yaml)")
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION, help="e.g. 1.33 (default) or 1.35")
    args = parser.parse_args(argv)
    files = args.files or manifest_files()
    failed = 0
    for path in files:
        errors = validate_file(path, args.kubernetes_version)
        failed += bool(errors)
        print(f"{'FAIL' if errors else 'ok  '} {path}")
        for e in errors:
            print(f"     {e}")
    print(f"{len(files) - failed} valid, {failed} invalid (Kubernetes {args.kubernetes_version}, KubeRay ray.io/v1)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
