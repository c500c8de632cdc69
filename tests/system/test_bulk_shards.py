"""Bulk classification scaled out as shard containers against a real S3 server (SeaweedFS).

Real photos go into a bucket; three `bestiary:latest` containers each run
`classify s3://…/in --out s3://…/out --shard I/3` (the host's network, to reach SeaweedFS on
127.0.0.1; credentials and endpoint in the AWS_* variables, as on any engine). One is killed with
SIGKILL once it has committed results, and `classify --merge` then reports the run incomplete
(exit 2); a new container with the same command continues where the killed one stopped. At the
end every photo has exactly one result — read through `classify --merge --merge-to` and, apart
from Bestiary's own reading, straight from the completion markers and parts in the bucket — and
the merge reports the run complete with the total count.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

from conftest import animal_photos
from s3_client import S3
from containers import Container, bestiary_image, removed_at_exit, run_container  # noqa: F401

SHARDS = 3
PER_CLASS = 24  # all 240 shared photos: about 80 a shard
INCOMPLETE = 2  # `classify --merge` when a shard has not finished


def docker_env(s3: S3) -> list[str]:
    options = ["--network", "host"]
    for name, value in {**s3.container_env(), "BESTIARY_LOG": "warn"}.items():
        options += ["--env", f"{name}={value}"]
    return options


def report_of(container: Container) -> dict:
    """The JSON a `--json` run printed last on stdout."""
    out = container.stdout()
    start = out.rfind("\n{")
    return json.loads(out[start + 1 :] if start >= 0 else out[out.index("{") :])


def markers(s3: S3, run_prefix: str, shard: int) -> list[dict]:
    """Completion markers of one shard, read from the bucket."""
    folder = f"{run_prefix}/shard-{shard:05d}-of-{SHARDS:05d}"
    return [json.loads(s3.get(key)) for key in s3.list(f"{folder}/progress/")]


def committed_keys(s3: S3, run_prefix: str) -> list[str]:
    """Every key in the committed parts (those a marker names), read from the bucket directly."""
    keys = []
    for shard in range(SHARDS):
        folder = f"{run_prefix}/shard-{shard:05d}-of-{SHARDS:05d}"
        for marker in markers(s3, run_prefix, shard):
            if marker.get("part"):
                part = s3.get(f"{folder}/parts/{marker['part']}").decode()
                lines = [json.loads(line) for line in part.splitlines() if line.strip()]
                assert len(lines) == marker["records"], marker
                keys.extend(line["key"] for line in lines)
    return keys


def test_three_shards_one_killed_and_restarted_classify_every_photo_once(bestiary_image, s3, tmp_path):  # noqa: F811
    prefix = f"bulk-shards-{uuid.uuid4().hex[:8]}"
    photos = {f"{label}/{path.name}": path for label, paths in animal_photos(PER_CLASS).items() for path in paths}
    t0 = time.monotonic()
    for key, path in photos.items():
        s3.put(f"{prefix}/in/{key}", path.read_bytes(), "image/jpeg")
    timings = {"upload_s": round(time.monotonic() - t0, 2)}
    out = s3.url(f"{prefix}/out")

    def classify(shard: int) -> list[str]:
        # One photo at a time, in parts of two, so the run lasts long enough to be killed with
        # results committed and more to come.
        return [
            "classify", s3.url(f"{prefix}/in"), "--out", out, "--shard", f"{shard}/{SHARDS}",
            "--concurrency", "1", "--batch-size", "1", "--threads", "1", "--decode-threads", "1",
            "--part-size", "2", "--json",
        ]  # fmt: skip

    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o777)  # the container's user (uid 10001) writes the merged file
    victim_index = 1
    with removed_at_exit() as started:

        def run(*args: str, name: str, volumes: list[str] = ()) -> Container:
            options = docker_env(s3) + [item for volume in volumes for item in ("--volume", volume)]
            container = run_container(bestiary_image, *args, name=name, options=options)
            started.append(container)
            return container

        def merge(*extra: str) -> tuple[int, dict]:
            container = run("classify", "--merge", out, "--json", *extra, name="bulk-merge",
                            volumes=[f"{results}:/results"])  # fmt: skip
            code = container.wait(timeout=120)
            return code, report_of(container)

        t1 = time.monotonic()
        shards = [run(*classify(i), name=f"bulk-shard-{i}") for i in range(SHARDS)]
        victim = shards[victim_index]
        # Kill the victim once its first part is committed (a marker is in the bucket).
        run_prefix = None
        deadline = time.monotonic() + 180
        while True:
            assert time.monotonic() < deadline, f"no committed part from shard {victim_index}:\n{victim.logs()}"
            assert victim.state()["Running"], f"shard {victim_index} ended before it could be killed:\n{victim.logs()}"
            folders = {key.split("/")[2] for key in s3.list(f"{prefix}/out/") if "/progress/" in key
                       and f"shard-{victim_index:05d}-of-" in key}  # fmt: skip
            if folders:
                (folder,) = folders
                run_prefix = f"{prefix}/out/{folder}"
                break
            time.sleep(0.05)
        victim.kill()
        victim_exit = victim.wait()
        timings["victim_killed_after_s"] = round(time.monotonic() - t1, 2)
        killed_with = sum(m["records"] for m in markers(s3, run_prefix, victim_index))

        survivors = [c for i, c in enumerate(shards) if i != victim_index]
        survivor_exits = [c.wait() for c in survivors]
        survivor_reports = [report_of(c) for c in survivors]
        timings["survivors_done_s"] = round(time.monotonic() - t1, 2)

        incomplete_code, incomplete = merge()

        t2 = time.monotonic()
        restarted = run(*classify(victim_index), name=f"bulk-shard-{victim_index}-again")
        restarted_exit = restarted.wait()
        restarted_report = report_of(restarted)
        timings["restarted_shard_s"] = round(time.monotonic() - t2, 2)

        merge_code, merged = merge("--merge-to", "/results/all.jsonl")
        logs = {c.name: c.logs()[-2000:] for c in started}

    merged_keys = [json.loads(line)["key"] for line in (results / "all.jsonl").read_text().splitlines() if line]
    direct_keys = committed_keys(s3, run_prefix)
    expected = set(photos)
    shard_total = restarted_report["all_runs"]["records"]
    labelled = [json.loads(line) for line in (results / "all.jsonl").read_text().splitlines() if line]
    correct = sum(record["label"] == record["key"].split("/")[0] for record in labelled)
    numbers = {
        "photos": len(photos),
        "killed_shard_committed_before_kill": killed_with,
        "killed_shard_total": shard_total,
        "restarted_shard_this_run": restarted_report["this_run"]["records"],
        "survivor_records": [r["this_run"]["records"] for r in survivor_reports],
        "merge_exit_before_restart": incomplete_code,
        "merge_exit_after": merge_code,
        "merged_records": merged["merged_records"],
        "results_read_from_bucket": len(direct_keys),
        "labels_matching_folder": f"{correct}/{len(labelled)}",
        **timings,
    }
    print("\nthree shard containers, one killed and restarted: " + json.dumps(numbers, indent=1))

    assert victim_exit == 137, f"the victim was not killed mid-run (exit {victim_exit}):\n{logs}"
    assert 0 < killed_with < shard_total, "killed halfway: some results committed, some not"
    assert survivor_exits == [0, 0], logs
    assert restarted_exit == 0, logs
    # Before the restart, merge sees the killed shard unfinished.
    assert incomplete_code == INCOMPLETE, incomplete
    assert incomplete["runs"][0]["complete"] is False
    # The restart continued after the last committed key: it redid nothing already committed.
    assert restarted_report["this_run"]["records"] == shard_total - killed_with
    assert restarted_report["listing_complete"] is True
    # Every photo exactly once, as Bestiary merges it and as the bucket holds it.
    for keys in (merged_keys, direct_keys):
        counts = Counter(keys)
        assert set(counts) == expected, (expected ^ set(counts))
        assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    assert merge_code == 0, merged
    (run_summary,) = merged["runs"]
    assert run_summary["complete"] is True
    assert run_summary["missing_shards"] == []
    assert run_summary["tally"]["records"] == len(photos) == merged["merged_records"]
    assert sum(r["this_run"]["records"] for r in survivor_reports) + shard_total == len(photos)
    # The built-in model on its own training photos: nearly all right (a sanity check on results).
    assert correct >= 0.9 * len(photos), numbers
