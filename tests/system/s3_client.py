"""A minimal S3 client for the system tests: signed (SigV4) PUT, GET and ListObjectsV2 with `requests`.

The tests put photos into the test S3 server (SeaweedFS, on loopback) and read back what the
containers wrote, without boto3: path-style URLs, the payload's SHA-256 in the signature, the
region `us-east-1` as SeaweedFS expects.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import subprocess
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import requests

from conftest import stop_process

REGION = "us-east-1"


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    @classmethod
    def from_env(cls, env: dict[str, str]) -> S3 | None:
        """The server `.ci/run` started (BESTIARY_TEST_S3_*), if `env` names one."""
        names = ["ENDPOINT", "BUCKET", "ACCESS_KEY", "SECRET_KEY"]
        values = [env.get(f"BESTIARY_TEST_S3_{name}", "") for name in names]
        return cls(*values) if all(values) else None

    def container_env(self) -> dict[str, str]:
        """What a `bestiary` process reads to reach this server (crates/storage)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    # --- requests ---

    def put(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> None:
        reply = self._request("PUT", key, body=body, headers={"content-type": content_type})
        reply.raise_for_status()

    def get(self, key: str) -> bytes:
        reply = self._request("GET", key)
        reply.raise_for_status()
        return reply.content

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix`, in key order (ListObjectsV2, every page)."""
        keys: list[str] = []
        token = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            reply = self._request("GET", "", query=query)
            reply.raise_for_status()
            fields = _fields(reply.content)
            keys.extend(fields.get("Key", []))
            token = (fields.get("NextContinuationToken") or [None])[0]
            if (fields.get("IsTruncated") or ["false"])[0] != "true" or not token:
                return keys

    def _request(
        self,
        method: str,
        key: str,
        body: bytes = b"",
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        endpoint = urllib.parse.urlsplit(self.endpoint)
        path = "/" + self.bucket + ("/" + urllib.parse.quote(key, safe="/-_.~") if key else "")
        canonical_query = "&".join(
            f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
            for k, v in sorted((query or {}).items())
        )
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        payload_hash = hashlib.sha256(body).hexdigest()
        signed = {
            "host": endpoint.netloc,
            "x-amz-content-sha256": payload_hash,
            "x-amz-date": amz_date,
            **{k.lower(): v for k, v in (headers or {}).items()},
        }
        names = sorted(signed)
        canonical_request = "\n".join(
            [
                method,
                path,
                canonical_query,
                "".join(f"{name}:{signed[name].strip()}\n" for name in names),
                ";".join(names),
                payload_hash,
            ]
        )
        scope = f"{day}/{REGION}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
        )
        key_bytes = ("AWS4" + self.secret_key).encode()
        for part in (day, REGION, "s3", "aws4_request"):
            key_bytes = hmac.new(key_bytes, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key_bytes, to_sign.encode(), hashlib.sha256).hexdigest()
        signed["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        url = f"{endpoint.scheme}://{endpoint.netloc}{path}" + (f"?{canonical_query}" if canonical_query else "")
        return requests.request(method, url, data=body or None, headers=signed, timeout=30)


class SeaweedFs:
    """The testkit's `seaweedfs` binary (crates/testkit/src/bin/seaweedfs.rs) run for one test module:
    SeaweedFS on free loopback ports, its variables in an env file, stopped by SIGTERM."""

    def __init__(self, binary: Path, state: Path):
        self.env_file = state / "s3.env"
        self.log = open(state / "seaweedfs.log", "wb")
        self.proc = subprocess.Popen([str(binary), str(self.env_file)], stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 90.0) -> S3:
        deadline = time.monotonic() + timeout
        while not self.env_file.is_file():
            if self.proc.poll() is not None:
                raise RuntimeError(f"seaweedfs exited with {self.proc.returncode}: see {self.log.name}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"SeaweedFS not ready in {timeout} s: see {self.log.name}")
            time.sleep(0.2)
        env = {}
        for line in self.env_file.read_text().splitlines():
            if line.startswith("export "):
                name, _, value = line[len("export ") :].partition("=")
                env[name] = value.strip("'")
        found = S3.from_env(env)
        assert found is not None, f"{self.env_file} lacks BESTIARY_TEST_S3_*: {env}"
        return found

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()



def _fields(xml: bytes) -> dict[str, list[str]]:
    """Text of every element of a ListObjectsV2 answer by tag, namespaces dropped, in order."""
    fields: dict[str, list[str]] = {}
    for element in ElementTree.fromstring(xml).iter():
        fields.setdefault(element.tag.rsplit("}", 1)[-1], []).append(element.text or "")
    return fields
