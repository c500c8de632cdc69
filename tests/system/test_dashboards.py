"""The dashboards and alarms (deploy/grafana, deploy/cloudwatch) chart metrics the real server emits.

One `bestiary serve` gets real requests (photos, an undecodable one, a failed model reload),
then every Bestiary metric a Grafana query names must be in its /metrics, and every Bestiary
metric and dimension the CloudWatch dashboard and alarms name must be in the Embedded Metric
Format records it prints on stdout.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time

import pytest
import requests
import yaml

from conftest import ANIMALS10, ROOT, serve

GRAFANA = ROOT / "deploy" / "grafana"
CLOUDWATCH = ROOT / "deploy" / "cloudwatch"
# Kept by kube-state-metrics, not Bestiary; a panel using one says so in its description.
EXTERNAL_PROMETHEUS = {
    "kube_deployment_status_replicas": "kube-state-metrics",
    "kube_deployment_status_replicas_available": "kube-state-metrics",
}
# What SageMaker publishes for a real-time endpoint (AWS docs, "Monitor Amazon SageMaker AI with
# Amazon CloudWatch"): (namespace, metric) with the dimensions EndpointName and VariantName.
SAGEMAKER_METRICS = {
    ("AWS/SageMaker", name)
    for name in (
        "Invocations",
        "InvocationsPerInstance",
        "Invocation4XXErrors",
        "Invocation5XXErrors",
        "InvocationModelErrors",
        "ModelLatency",
        "OverheadLatency",
        "ModelSetupTime",
    )
} | {
    ("/aws/sagemaker/Endpoints", name)
    for name in ("CPUUtilization", "MemoryUtilization", "DiskUtilization", "GPUUtilization")
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def jpeg(seed: int) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (320, 240), ((seed * 53) % 256, (seed * 97) % 256, 128))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def photos() -> list[bytes]:
    """Real photos when ../shared has them, else generated JPEGs."""
    if ANIMALS10.is_dir():
        found = sorted(ANIMALS10.glob("*/*.jp*g"))[::20][:12]
        if found:
            return [p.read_bytes() for p in found]
    return [jpeg(i) for i in range(12)]


def grafana_dashboards() -> list[dict]:
    paths = sorted(GRAFANA.glob("*.json"))
    assert paths, f"no dashboard in {GRAFANA}"
    return [json.loads(p.read_text()) for p in paths]


def grafana_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [p for p in panels if p["type"] != "row"]


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (Bestiary's and kube-state-metrics')."""
    return set(re.findall(r"\b((?:bestiary|kube)_[a-z0-9_]+)\b", expr))


def exposed_families(metrics_text: str) -> set[str]:
    """Every metric name in a Prometheus text exposition, histograms with their series names."""
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "histogram":
                names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def cloudwatch_metrics() -> list[tuple[str, str, dict[str, str], str]]:
    """(namespace, metric, dimensions, where) of every metric the dashboard and alarms name."""
    found = []
    body = json.loads((CLOUDWATCH / "dashboard.json").read_text())
    for index, widget in enumerate(body["widgets"]):
        for entry in widget.get("properties", {}).get("metrics", []):
            parts = [p for p in entry if not isinstance(p, dict)]
            if not parts:  # a metric-math expression
                continue
            assert "." not in parts, "write each metric out in full (no '.' shorthand)"
            namespace, name, *dims = parts
            found.append((namespace, name, dict(zip(dims[::2], dims[1::2])), f"dashboard widget {index}"))
    template = yaml.safe_load((CLOUDWATCH / "alarms.yaml").read_text())
    for key, resource in template["Resources"].items():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = resource["Properties"]
        dims = {d["Name"]: d["Value"] for d in props["Dimensions"]}
        found.append((props["Namespace"], props["MetricName"], dims, f"alarm {key}"))
        for parameter in re.findall(r"'Ref': '(\w+)'", str(props)):
            assert parameter in template["Parameters"], f"alarm {key} uses undeclared {parameter}"
    return found


@pytest.fixture(scope="module")
def exercised_server(tmp_path_factory):
    """A server that has classified photos, refused a bad one and failed a reload, with its EMF
    records; yields (/metrics text, EMF records)."""
    tmp = tmp_path_factory.mktemp("dashboards")
    models = tmp / "models"
    shutil.copytree(ROOT / "models" / "animals", models / "animals")
    log = tmp / "serve.log"
    args = [
        "--model", str(models / "animals"),
        "--model-poll-interval", "0",
        "--cloudwatch-emf",
        "--cloudwatch-emf-interval", "0.5",
        "--open-admin",  # the test fails a reload through /admin/reload, without a key
    ]
    with serve(*args, log=log) as base:
        for i, photo in enumerate(photos()):
            reply = requests.post(
                f"{base}/v1/classify",
                data=photo,
                headers={"Content-Type": "image/jpeg"},
                timeout=30,
            )
            assert reply.status_code == 200, reply.text
        files = [("file", (f"p{i}.jpg", photo, "image/jpeg")) for i, photo in enumerate(photos()[:3])]
        assert requests.post(f"{base}/v1/classify", files=files, timeout=30).status_code == 200
        invocation = requests.post(
            f"{base}/invocations", data=photos()[0], headers={"Content-Type": "image/jpeg"}, timeout=30
        )
        assert invocation.status_code == 200, invocation.text
        bad = requests.post(
            f"{base}/v1/classify", data=b"\xff\xd8 not a jpeg", headers={"Content-Type": "image/jpeg"}, timeout=30
        )
        assert bad.status_code == 422, bad.text
        # A `latest` naming a missing version: the reload fails and is counted.
        (models / "animals" / "latest").write_text('{"version": "missing"}')
        assert requests.post(f"{base}/admin/reload", timeout=30).status_code >= 500
        time.sleep(1.5)  # at least two EMF periods with traffic in them
        metrics = requests.get(f"{base}/metrics", timeout=10).text
    records = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "_aws" in record:
                records.append(record)
    assert records, f"no EMF record on stdout:\n{log.read_text()[-2000:]}"
    return metrics, records


def test_every_grafana_metric_is_exposed(exercised_server):
    metrics, _ = exercised_server
    exposed = exposed_families(metrics)
    checked = set()
    for dashboard in grafana_dashboards():
        panels = grafana_panels(dashboard)
        assert len({p["id"] for p in panels}) == len(panels), "panel ids are not unique"
        for panel in panels:
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                names = metric_names(target["expr"])
                assert names, f"{panel['title']}: {target['expr']}"
                for name in names:
                    if name in EXTERNAL_PROMETHEUS:
                        assert EXTERNAL_PROMETHEUS[name] in panel["description"], (
                            f"{panel['title']} uses {name} without saying it is external"
                        )
                        continue
                    assert name in exposed, f"{panel['title']}: {name} is not in /metrics"
                    checked.add(name)
    # The dashboard covers what the issue asks for.
    for wanted in (
        "bestiary_images_classified_total",
        "bestiary_request_duration_seconds_bucket",
        "bestiary_queue_depth",
        "bestiary_in_flight_image_seconds_total",
        "bestiary_batch_size_bucket",
        "bestiary_cost_per_vcpu_hour_usd",
    ):
        assert wanted in checked, wanted


def test_grafana_dashboard_is_importable():
    for dashboard in grafana_dashboards():
        assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        for panel in grafana_panels(dashboard):
            assert panel["datasource"]["uid"] == "${datasource}"
            for target in panel["targets"]:
                for used in re.findall(r"\$(\w+)", target["expr"]):
                    assert used in variables or used.startswith("__"), f"{panel['title']}: ${used}"


def test_every_cloudwatch_metric_is_in_the_emf_output_or_sagemakers(exercised_server):
    _, records = exercised_server
    declared, dimension_sets = {}, []
    for record in records:
        for directive in record["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                declared.setdefault(directive["Namespace"], set()).add(metric["Name"])
                assert isinstance(record[metric["Name"]], (int, float)), metric["Name"]
            for dims in directive["Dimensions"]:
                assert all(isinstance(record[d], str) for d in dims), dims
                dimension_sets.append(set(dims))
    assert any(r["ImagesClassified"] > 0 for r in records), "no EMF period saw the requests"
    namespaces = set()
    for namespace, name, dims, where in cloudwatch_metrics():
        namespaces.add(namespace)
        if namespace in declared:
            assert name in declared[namespace], f"{where}: {namespace}/{name} is not in the EMF records"
            assert set(dims) in dimension_sets, f"{where}: dimensions {sorted(dims)} are not an EMF set"
        else:
            assert (namespace, name) in SAGEMAKER_METRICS, f"{where}: unknown metric {namespace}/{name}"
            assert set(dims) == {"EndpointName", "VariantName"}, where
    assert {"Bestiary", "AWS/SageMaker"} <= namespaces
