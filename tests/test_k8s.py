"""Kubernetes and KServe manifests (deploy/k8s, deploy/kserve), checked without a cluster.

- Every object of every overlay (and of the overlays with each optional component) is
  validated, strictly (unknown fields are errors), against the Kubernetes API's schemas that
  `kubernetes-validate` ships (offline), for the oldest and the newest version it knows.
- The InferenceService is validated against the schema of KServe's CRD, vendored in
  tests/schemas/ (see extract_kserve_schema.py there for its source and how to renew it),
  closed like the API server's strict field validation closes it.
- The overlays are rendered by `render` below: the subset of kustomize that deploy/k8s uses
  (resources, components, strategic-merge patches, images). Where `kustomize` or
  `kubectl` is installed, its own output must match that rendering; CI has neither, so this
  cross-check skips there and the rendering stands on its own.
- Probes, ports, the drain and every MNIST_* variable are checked against the service itself
  (Settings, the app's routes, service/drain.py), so the manifests cannot drift from it.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.config import Settings
from service.drain import READY_PATHS, SHUTDOWN_TIMEOUT_S
from service.security import PROBE_PATHS
from tests.conftest import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
ISVC = REPO_ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
KSERVE_SCHEMA = REPO_ROOT / "tests" / "schemas" / "kserve-inferenceservice-v1beta1.json"

OVERLAYS = ("cpu", "gpu")
COMPONENTS = ("redis", "weights-pvc", "weights-init")
# Every overlay alone, and each component on the overlay it suits best.
VARIANTS = [(overlay, ()) for overlay in OVERLAYS] + [
    ("cpu", ("redis",)),
    ("gpu", ("weights-pvc",)),
    ("cpu", ("weights-init", "redis")),
]
K8S_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
# The start-up probe must allow at least this long for loading the models, as the image's
# HEALTHCHECK start period does.
MODEL_LOAD_S = 60

Obj = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# rendering: the kustomize subset deploy/k8s uses

# Strategic merge: lists of these fields merge item by item on the key; other lists replace.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


def merge(base: Any, patch: Any, field: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value, key) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        out = list(base)
        for item in patch:
            index = next((i for i, old in enumerate(out) if old.get(key) == item.get(key)), None)
            if index is None:
                out.append(item)
            else:
                out[index] = merge(out[index], item)
        return out
    return patch


def load_docs(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def set_images(objs: list[Obj], images: list[Obj]) -> None:
    for obj in objs:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name = container["image"].split("@")[0].rsplit(":", 1)[0]
            for image in images:
                if image["name"] == name:
                    new = image.get("newName", name)
                    container["image"] = f"{new}:{image['newTag']}" if "newTag" in image else new


def apply(folder: Path, objs: list[Obj]) -> list[Obj]:
    """A kustomization or component in `folder` applied to `objs` (its resources added)."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    for resource in spec.get("resources", []):
        path = folder / resource
        objs = apply(path, objs) if path.is_dir() else objs + load_docs(path)
    for component in spec.get("components", []):
        objs = apply(folder / component, objs)
    for patch in spec.get("patches", []):
        [doc] = load_docs(folder / patch["path"])
        matches = [
            i
            for i, obj in enumerate(objs)
            if (obj["kind"], obj["metadata"]["name"]) == (doc["kind"], doc["metadata"]["name"])
        ]
        assert len(matches) == 1, f"{folder / patch['path']}: patches {len(matches)} objects"
        objs[matches[0]] = merge(objs[matches[0]], doc)
    set_images(objs, spec.get("images", []))
    return objs


def combo_kustomization(overlay: str, components: tuple[str, ...]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [f"../{overlay}"],
            "components": [f"../../components/{name}" for name in components],
        }
    )


def render(overlay: str, components: tuple[str, ...] = ()) -> list[Obj]:
    objs = apply(K8S / "overlays" / overlay, [])
    for name in components:
        objs = apply(K8S / "components" / name, objs)
    return copy.deepcopy(objs)


def find(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def api_container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] in ("api", "kserve-container"))


# ---------------------------------------------------------------------------------------------
# schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("overlay", "components"), VARIANTS)
def test_every_object_validates_against_the_kubernetes_schemas(
    overlay: str, components: tuple[str, ...], version: str
) -> None:
    objs = render(overlay, components)
    kinds = sorted(o["kind"] for o in objs)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(kinds)
    for obj in objs:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_kubernetes_validation_is_strict() -> None:
    """A misspelt field or a wrong type is an error, so the test above can fail."""
    deployment = find(render("cpu"), "Deployment")
    typo = copy.deepcopy(deployment)
    api_container(typo)["readinesProbe"] = api_container(typo).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSIONS[-1], strict=True)
    wrong_type = copy.deepcopy(deployment)
    api_container(wrong_type)["env"][0]["value"] = 8000
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSIONS[-1], strict=True)


def closed(schema: Any) -> Any:
    """The CRD schema as the API server applies it with strict field validation: an object
    with declared properties accepts no others (unless it keeps unknown fields)."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def isvc_validator() -> jsonschema.Validator:
    schema = closed(json.loads(KSERVE_SCHEMA.read_text()))
    schema.pop("$comment")
    return jsonschema.Draft7Validator(schema)


def test_inference_service_validates_against_the_kserve_crd(isvc_validator) -> None:
    [isvc] = load_docs(ISVC)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in isvc_validator.iter_errors(isvc)]
    assert not errors, "\n".join(errors)
    # Its pod-level fields are Kubernetes' own: the container is checked as one, too.
    container = api_container({"spec": {"template": {"spec": isvc["spec"]["predictor"]}}})
    pod = {"containers": [container], "volumes": isvc["spec"]["predictor"]["volumes"]}
    pod_obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": pod}
    kubernetes_validate.validate(pod_obj, K8S_VERSIONS[-1], strict=True)

    typo = copy.deepcopy(isvc)
    typo["spec"]["predictor"]["containers"][0]["livenesProbe"] = {}
    assert list(isvc_validator.iter_errors(typo)), "the CRD schema must reject unknown fields"


# ---------------------------------------------------------------------------------------------
# the overlays' differences


def test_only_the_gpu_overlay_asks_for_a_gpu() -> None:
    for overlay, device in (("cpu", "cpu"), ("gpu", "cuda")):
        container = api_container(find(render(overlay), "Deployment"))
        limits = container["resources"]["limits"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MNIST_DEVICE"] == device
        if overlay == "gpu":
            assert limits["nvidia.com/gpu"] == 1
        else:
            assert "nvidia.com/gpu" not in limits
            assert "nvidia.com/gpu" not in container["resources"].get("requests", {})


def test_cpu_overlay_fits_its_workers_and_threads_into_its_cpu_limit() -> None:
    container = api_container(find(render("cpu"), "Deployment"))
    env = {e["name"]: e["value"] for e in container["env"]}
    cpus = int(container["resources"]["limits"]["cpu"])
    assert int(env["MNIST_WORKERS"]) * int(env["MNIST_TORCH_THREADS"]) <= cpus


# ---------------------------------------------------------------------------------------------
# agreement with the service


def pod_specs() -> list[tuple[str, Obj, Obj]]:
    """(where, pod spec, api container) of every rendered variant and the InferenceService."""
    out = []
    for overlay, components in VARIANTS:
        deployment = find(render(overlay, components), "Deployment", "mnist-serve")
        pod = deployment["spec"]["template"]["spec"]
        out.append((f"{overlay}+{','.join(components)}", pod, api_container(deployment)))
    [isvc] = load_docs(ISVC)
    predictor = isvc["spec"]["predictor"]
    out.append(("kserve", predictor, predictor["containers"][0]))
    return out


def settings_from(env: list[Obj], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the service builds from this container's environment (and nothing else)."""
    for name in list(os.environ):
        if name.startswith("MNIST_"):
            monkeypatch.delenv(name)
    for var in env:
        monkeypatch.setenv(var["name"], var["value"])
    return Settings()


@functools.cache
def app_get_paths() -> frozenset[str]:
    """The GET paths of the service, from its OpenAPI document (probes included)."""
    from service.app import create_app

    paths = create_app(Settings(device="cpu")).openapi()["paths"]
    return frozenset(path for path, operations in paths.items() if "get" in operations)


@pytest.mark.parametrize("where", [w for w, _, _ in pod_specs()])
def test_probes_ports_and_settings_agree_with_the_service(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, pod, container = next(p for p in pod_specs() if p[0] == where)
    env = container["env"]
    fields = {f"MNIST_{name.upper()}" for name in Settings.model_fields}
    unknown = {e["name"] for e in env if e["name"].startswith("MNIST_")} - fields
    assert not unknown, f"not settings of the service: {unknown}"
    settings = settings_from(env, monkeypatch)  # every value must pass the service's checks

    # One port, the one the service binds, on every interface.
    [port] = container["ports"]
    assert port["containerPort"] == settings.port
    assert settings.host == "0.0.0.0"

    paths = app_get_paths()
    probes = {kind: container[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}
    for kind, probe in probes.items():
        get = probe["httpGet"]
        assert get["port"] in (port.get("name"), port["containerPort"]), f"{kind}: wrong port"
        assert get["path"] in paths, f"{kind}: the service has no GET {get['path']}"
        assert get["path"] in PROBE_PATHS, f"{kind}: {get['path']} would need an API key"
    assert probes["startup"]["httpGet"]["path"] in READY_PATHS
    assert probes["readiness"]["httpGet"]["path"] in READY_PATHS
    assert probes["liveness"]["httpGet"]["path"] not in READY_PATHS, "liveness must not drain"
    startup = probes["startup"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= MODEL_LOAD_S

    # The drain: readiness sees the 503 while the pod still serves, and the grace period
    # covers the drain and the requests in flight after it.
    readiness = probes["readiness"]
    noticed = readiness["periodSeconds"] * readiness["failureThreshold"]
    assert noticed <= settings.drain_seconds
    assert pod["terminationGracePeriodSeconds"] > settings.drain_seconds + SHUTDOWN_TIMEOUT_S

    # Non-root, read-only root filesystem, the one writable place being an emptyDir on /tmp.
    uid = int(re.search(r"ARG APP_UID=(\d+)", (REPO_ROOT / "Dockerfile").read_text())[1])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]

    # The weights: the image's own folder, or a volume mounted read-only over it.
    if str(settings.weights_dir) in mounts:
        assert mounts[str(settings.weights_dir)]["readOnly"] is True
    else:
        assert settings.weights_dir == Path("/app/weights")


def test_service_hpa_and_pdb_point_at_the_deployment() -> None:
    objs = render("cpu")
    deployment = find(objs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = find(objs, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == api_container(deployment)["ports"][0]["name"]
    pdb = find(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = find(objs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2, "the PDB's one disruption leaves one pod answering"
    # A CPU-utilisation target needs CPU requests.
    assert api_container(deployment)["resources"]["requests"]["cpu"]


def test_the_redis_component_points_the_api_at_its_service(monkeypatch) -> None:
    objs = render("cpu", ("redis",))
    container = api_container(find(objs, "Deployment", "mnist-serve"))
    settings = settings_from(container["env"], monkeypatch)
    service = find(objs, "Service", "mnist-redis")
    [port] = service["spec"]["ports"]
    assert settings.rate_limit_storage == f"redis://{service['metadata']['name']}:{port['port']}"
    assert settings.rate_limit
    redis = find(objs, "Deployment", "mnist-redis")
    assert (
        service["spec"]["selector"].items()
        <= redis["spec"]["template"]["metadata"]["labels"].items()
    )
    api_labels = find(objs, "Service", "mnist-serve")["spec"]["selector"]
    assert not api_labels.items() <= redis["spec"]["template"]["metadata"]["labels"].items()


# ---------------------------------------------------------------------------------------------
# the rendering against real kustomize, where installed


def kustomize_command() -> list[str] | None:
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    return None


def normalised(objs: list[Obj]) -> list[Obj]:
    def norm(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: norm(v) for k, v in node.items()}
        if isinstance(node, list):
            items = [norm(v) for v in node]
            for key in ("name", "mountPath"):
                if items and all(isinstance(i, dict) and key in i for i in items):
                    return sorted(items, key=lambda i: i[key])
            return items
        return node

    return sorted((norm(o) for o in objs), key=lambda o: (o["kind"], o["metadata"]["name"]))


@pytest.mark.parametrize(("overlay", "components"), VARIANTS)
def test_rendering_matches_kustomize(
    overlay: str, components: tuple[str, ...], tmp_path: Path
) -> None:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed: the rendering is not compared")
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    folder = tree / "overlays" / "combo"
    folder.mkdir()
    (folder / "kustomization.yaml").write_text(combo_kustomization(overlay, components))
    result = subprocess.run([*command, str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    real = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert normalised(real) == normalised(render(overlay, components))
