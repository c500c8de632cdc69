"""The container image as Docker and SageMaker run it: what the image declares, serving with a
drain on SIGTERM, a SageMaker training job with the real /opt/ml paths (hyperparameters,
channels, metric lines, checkpoints, failure file, spot restart) and hosting of its artifact.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import re
import subprocess
import tarfile
import time
from pathlib import Path

import requests
from PIL import Image

from conftest import ROOT, animal_photos, bestiary_bin
from containers import LABEL, bestiary_image, docker, run_container  # noqa: F401 (fixture)

METRIC_DEFINITIONS = json.loads((ROOT / "deploy/sagemaker/metric-definitions.json").read_text())
CLASSES = {"amber": (230, 140, 20), "azure": (30, 110, 230), "lime": (90, 220, 40)}


class Container:
    """A container publishing 8080 on a free 127.0.0.1 port that knows when `docker run` began."""

    def __init__(self, image: str, *args: str, options: tuple[str, ...] = ()):
        self.started = time.monotonic()
        self.container = run_container(
            image, *args, name="sagemaker", options=["--publish", "127.0.0.1::8080", *options]
        )
        self.id = self.container.id
        self.base = f"http://127.0.0.1:{self.container.port()}"

    def wait_ready(self, path: str = "/ping", timeout: float = 60) -> float:
        """Seconds from `docker run` until `path` answered 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.base + path, timeout=2).status_code == 200:
                    return time.monotonic() - self.started
            except requests.RequestException:
                pass
            if not self.container.state().get("Running"):
                raise AssertionError(f"container exited:\n{self.logs()}")
            time.sleep(0.05)
        raise AssertionError(f"{self.base}{path} not ready in {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        return self.container.logs()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.container.remove()


def jpeg(color: tuple[int, int, int], seed: int, size: int = 64) -> bytes:
    """A photo of one colour with a little texture, distinct per seed."""
    image = Image.new("RGB", (size, size), color)
    pixels = image.load()
    for i in range(size):
        x, y = (i * 7 + seed * 13) % size, (i * 11 + seed * 5) % size
        pixels[x, y] = tuple(min(255, c + 40) for c in color)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def opt_ml(root: Path, hyperparameters: dict, photos_per_class: int = 12) -> Path:
    """A SageMaker training container's /opt/ml: config, one training channel, writable for the
    image's non-root user (SageMaker mounts these folders the same way)."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "inputdataconfig.json").write_text(
        json.dumps({"training": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}})
    )
    for name, color in CLASSES.items():
        folder = root / "input" / "data" / "training" / name
        folder.mkdir(parents=True)
        for i in range(photos_per_class):
            (folder / f"{i:03d}.jpg").write_bytes(jpeg(color, i))
    for sub in ("model", "output", "checkpoints"):
        (root / sub).mkdir()
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return root


# The SDK JSON-encodes every value ("\"adam\""); hand-written jobs send plain strings ("0.01").
TINY_JOB = {
    "arch": "\"seed-cnn\"",
    "width": "8",
    "depth": "2",
    "image_size": "32",
    "batch_size": "8",
    "optimizer": "\"adam\"",
    "lr": "0.01",
    "epochs": "3",
    "sagemaker_container_log_level": "20",
}


def train_job(image: str, root: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return docker(
        "run", "--rm", "--label", LABEL, "-v", f"{root}:/opt/ml", image, "train", check=False, timeout=timeout
    )


def test_the_image_declares_what_docker_and_sagemaker_expect(bestiary_image):
    image = bestiary_image
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["/usr/local/bin/bestiary"], "exec-form ENTRYPOINT"
    assert config["Cmd"] == ["serve"]
    assert config["User"] == "10001:10001", "non-root"
    assert "8080/tcp" in config["ExposedPorts"]
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    # onnxruntime is inside: `--engine auto` is the fast engine with no download.
    out = docker("run", "--rm", "--network", "none", image, "bench", "engine", "--iterations", "3", "--json")
    assert json.loads(out.stdout)["engine"].startswith("ort (onnxruntime from /usr/local/lib/bestiary"), out.stdout
    size = int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout)
    compressed = subprocess.run(
        f"docker save {image} | gzip -1 | wc -c", shell=True, capture_output=True, text=True, check=True
    )
    print(f"image {image}: {size / 1e6:.1f} MB, {int(compressed.stdout) / 1e6:.1f} MB compressed")
    assert int(compressed.stdout) < 150e6


def test_serve_in_a_container_answers_and_drains_on_sigterm(bestiary_image):
    image = bestiary_image
    photos = animal_photos(per_class=1)
    with Container(image, "serve", "--max-batch-delay-ms", "2") as server:
        ready = server.wait_ready("/v2/health/ready")
        print(f"docker run → ready: {ready:.2f} s")
        horse = photos["horse"][0].read_bytes()
        reply = requests.post(
            server.base + "/v1/classify", data=horse, headers={"Content-Type": "image/jpeg"}, timeout=30
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["predictions"][0]["label"] == "horse"

        # SIGTERM while requests are in flight: every one admitted still gets its answer, and
        # the process exits 0 within the drain time.
        def classify(body: bytes) -> int:
            try:
                return requests.post(
                    server.base + "/v1/classify", data=body,
                    headers={"Content-Type": "image/jpeg"}, timeout=30,
                ).status_code
            except requests.ConnectionError:
                return -1  # refused: sent after the listener closed, never admitted

        bodies = [p.read_bytes() for ps in photos.values() for p in ps] * 6
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(classify, b) for b in bodies]
            time.sleep(0.15)
            stopped = time.monotonic()
            docker("stop", "-t", "30", server.id)
            stop_seconds = time.monotonic() - stopped
            statuses = [f.result() for f in futures]
        exit_code = int(docker("inspect", "-f", "{{.State.ExitCode}}", server.id).stdout)
        logs = server.logs()
        print(f"SIGTERM drain: {stop_seconds:.2f} s, statuses {sorted(set(statuses))}")
        assert exit_code == 0, logs
        assert "stopped" in logs
        assert statuses.count(200) > 0
        # Admitted requests are answered; the only other outcome is a refused connection.
        assert set(statuses) <= {200, -1}, statuses


def test_a_sagemaker_training_job_trains_checkpoints_and_its_artifact_is_served(bestiary_image, tmp_path):
    image = bestiary_image
    root = opt_ml(tmp_path / "opt-ml", TINY_JOB)
    job = train_job(image, root)
    assert job.returncode == 0, job.stdout + job.stderr
    assert not (root / "output" / "failure").exists()

    # One metric line per epoch, read by the job's MetricDefinitions.
    for definition in METRIC_DEFINITIONS:
        values = re.findall(definition["Regex"], job.stdout)
        assert len(values) == 3, (definition, job.stdout)
        [float(v) for v in values]
    # The version is in /opt/ml/model (what SageMaker uploads), the checkpoints are not.
    pointer = json.loads((root / "model" / "model" / "latest").read_text())
    version = root / "model" / "model" / pointer["version"]
    assert (version / "model.onnx").is_file() and (version / "model.json").is_file()
    assert not (root / "model" / "model" / "training").exists()
    state = json.loads((root / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == 3

    # Hosting: the unpacked artifact at /opt/ml/model, the port SageMaker binds, batch settings.
    env = [
        "-e", "SAGEMAKER_BIND_TO_PORT=8080",
        "-e", "SAGEMAKER_BATCH=true",
        "-e", "SAGEMAKER_MAX_PAYLOAD_IN_MB=48",
        "-e", "SAGEMAKER_BATCH_STRATEGY=MULTI_RECORD",
        "-e", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS=3",
    ]
    options = ("-v", f"{root / 'model'}:/opt/ml/model:ro", *env)
    with Container(image, "serve", options=options) as server:
        ready = server.wait_ready("/ping")
        assert ready < 30, ready
        started = time.monotonic()
        assert requests.get(server.base + "/ping", timeout=2).status_code == 200
        assert time.monotonic() - started < 2
        parameters = requests.get(server.base + "/execution-parameters", timeout=5).json()
        assert parameters == {
            "MaxConcurrentTransforms": 3, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 48,
        }
        right = 0
        for name, color in CLASSES.items():
            reply = requests.post(
                server.base + "/invocations", data=jpeg(color, 99),
                headers={"Content-Type": "image/jpeg"}, timeout=30,
            )
            assert reply.status_code == 200, reply.text
            answer = reply.json()
            assert sorted(answer["labels"]) == sorted(CLASSES)
            right += answer["predicted_label"] == name
        assert right >= 2, "a model trained on three colours tells them apart"
        # A body bigger than the default 32 MiB but within SAGEMAKER_MAX_PAYLOAD_IN_MB is read
        # (and rejected as a photo, not as too large).
        big = requests.post(
            server.base + "/invocations", data=b"\0" * (40 * 1024 * 1024),
            headers={"Content-Type": "image/jpeg"}, timeout=60,
        )
        assert big.status_code == 422, big.text


def test_a_bad_hyperparameter_fails_the_job_with_its_reason(bestiary_image, tmp_path):
    image = bestiary_image
    root = opt_ml(tmp_path / "opt-ml", {**TINY_JOB, "epochz": "3"}, photos_per_class=2)
    job = train_job(image, root, timeout=120)
    assert job.returncode != 0
    failure = (root / "output" / "failure").read_text()
    assert "unknown hyperparameter(s): epochz" in failure, failure
    # A value clap refuses is a failure too, with clap's explanation.
    root = opt_ml(tmp_path / "opt-ml-2", {**TINY_JOB, "optimizer": "\"rmsprop\""}, photos_per_class=2)
    job = train_job(image, root, timeout=120)
    assert job.returncode != 0
    assert "rmsprop" in (root / "output" / "failure").read_text()


def test_a_stopped_spot_job_saves_a_checkpoint_and_the_restarted_job_resumes(bestiary_image, tmp_path):
    image = bestiary_image
    job = {**TINY_JOB, "epochs": "40", "image_size": "48"}
    root = opt_ml(tmp_path / "opt-ml", job, photos_per_class=20)
    name = f"bestiary-spot-{os.getpid()}"
    docker("run", "-d", "--label", LABEL, "--name", name, "-v", f"{root}:/opt/ml", image, "train")
    try:
        deadline = time.monotonic() + 300
        while "epoch=2 " not in docker("logs", name, check=False).stdout:
            assert time.monotonic() < deadline, docker("logs", name, check=False).stderr
            time.sleep(0.2)
        # StopTrainingJob and a spot reclaim send SIGTERM and allow 120 s.
        docker("stop", "-t", "120", name)
        code = int(docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout)
        logs = docker("logs", name, check=False)
    finally:
        docker("rm", "-f", name, check=False)
    assert code == 143, logs.stdout + logs.stderr
    assert "continues with --resume" in logs.stderr
    state = json.loads((root / "checkpoints" / "state.json").read_text())
    done = state["epochs_done"]
    assert 2 <= done < 40, state
    assert not (root / "output" / "failure").exists(), "a stop is not a failure"

    resumed = train_job(image, root)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    epochs = [int(e) for e in re.findall(r"epoch=([0-9]+) ", resumed.stdout)]
    # A mid-epoch checkpoint is of epoch `done` (0-based), printed as done + 1 once finished.
    assert epochs == list(range(done + 1, 41)), epochs
    assert json.loads((root / "checkpoints" / "state.json").read_text())["epochs_done"] == 40


def test_a_packaged_model_is_served_from_opt_ml_model(bestiary_image, tmp_path):
    image = bestiary_image
    archive = tmp_path / "model.tar.gz"
    subprocess.run(
        [str(bestiary_bin()), "package", "--model", "builtin", "--to", str(archive)],
        check=True, capture_output=True,
    )
    unpacked = tmp_path / "model"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extractall(unpacked, filter="data")
    assert any(n.endswith("/latest") for n in names) and any(n.endswith("/model.onnx") for n in names)
    for path in [unpacked, *unpacked.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    photos = animal_photos(per_class=1)
    with Container(image, "serve", options=("-v", f"{unpacked}:/opt/ml/model:ro")) as server:
        server.wait_ready("/ping")
        right = 0
        for label, [photo] in photos.items():
            reply = requests.post(
                server.base + "/invocations", data=photo.read_bytes(),
                headers={"Content-Type": "application/x-image"}, timeout=30,
            )
            assert reply.status_code == 200, reply.text
            right += reply.json()["predicted_label"] == label
        assert right >= 8, right
        logs = server.logs()
        assert "/opt/ml/model" in logs, logs
