"""The bounded soak CI runs (scripts/soak runs it for 10 minutes): 20 s of wrk at several times
the server's capacity; every response is 200 or 429 with Retry-After, memory stays in its band,
admitted requests keep a bounded p99 and the server is healthy afterwards."""

import json
import shutil

from conftest import bestiary_bin, require

import soak


def test_overload_is_shed_with_429_and_the_server_stays_healthy():
    require(shutil.which("wrk") is not None, "wrk is absent (scripts/install-system-packages installs it)")
    require(bestiary_bin().exists(), f"{bestiary_bin()} is not built")
    report = soak.soak(seconds=20, max_concurrent=8, max_queue=16)
    print(json.dumps(report, indent=2))
    # Paced at twice the capacity; the pacing is approximate (admitted requests take time too).
    assert report["offered_rps"] >= 1.5 * report["capacity_rps"], report
    assert soak.problems(report, rss_band_mib=64.0, p99_limit_s=5.0) == [], report
