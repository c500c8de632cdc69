"""The web console of `bestiary serve` (issue #13) in a real browser: Debian's headless Chromium
driven by Playwright (the PyPI client only; its own browsers are never downloaded).

Each test starts the real server on a bucket of real photos (a local folder, or SeaweedFS through
S3) and uses the page as a person would: drops photos on Classify and reads their labels, browses
and filters the bucket gallery, opens the results of a `bestiary classify` run, clicks a cell of
the confusion matrix of a model trained here, watches Usage move after requests, and is asked for
the API key when the server has one. Screenshots of every tab, the page weight of the first load
and the time from a drop to its first result go to target/test-artifacts/console/ (the numbers
are printed too: `pytest -s`). No Content-Security-Policy violation may happen on any page.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests

from conftest import ROOT, animal_photos, bestiary_bin, require, serve

CHROMIUM = Path(os.environ.get("BESTIARY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = ROOT / "target" / "test-artifacts" / "console"
TIMEOUT_MS = 60_000  # a debug build classifying a page of photos on a busy two-core machine
ITEM = "[data-testid=gallery-item]"


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (each test gets a fresh context)."""
    require(CHROMIUM.is_file(), f"{CHROMIUM} is missing: scripts/install-system-packages (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright is not installed in this Python: scripts/install-tools")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A page in a fresh context; fails the test on a script error or a CSP violation."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    tab.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    yield tab
    context.close()
    assert not problems, problems


def make_bucket(folder: Path, per_class: int) -> dict[str, Path]:
    """A local bucket with `photos/<class>/<photo>`; returns bucket key → source photo."""
    keys = {}
    for label, paths in animal_photos(per_class).items():
        (folder / "photos" / label).mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copyfile(path, folder / "photos" / label / path.name)
            keys[f"photos/{label}/{path.name}"] = path
    return keys


def correct_photos(base: str, count: int, headers: dict[str, str] | None = None) -> list[tuple[Path, dict]]:
    """Photos of different classes the served model labels right, with its answer (asked with requests)."""
    chosen = []
    for label, paths in animal_photos(3).items():
        for path in paths:
            reply = requests.post(f"{base}/v1/classify?top_k=5", data=path.read_bytes(), timeout=60,
                                  headers={"Content-Type": "image/jpeg", **(headers or {})})  # fmt: skip
            reply.raise_for_status()
            prediction = reply.json()["predictions"][0]
            if prediction["label"] == label:
                chosen.append((path, prediction))
                break
        if len(chosen) == count:
            return chosen
    pytest.fail(f"the model labels fewer than {count} classes' photos right: {chosen}")


def error_code(error) -> str:
    return error.get("code") if isinstance(error, dict) else str(error)


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def card(page, path: Path):
    return page.locator(f"[data-testid=result-card][data-name='{path.name}']")


def wait_done(page, path: Path) -> None:
    card(page, path).and_(page.locator("[data-state=done], [data-state=error]")).wait_for()
    assert card(page, path).get_attribute("data-state") == "done", card(page, path).inner_text()


def drop_files(page, paths: list[Path]) -> None:
    """A real drop on the drop zone: a DataTransfer of Files built in the page from the bytes."""
    files = [{"name": p.name, "type": "image/jpeg", "data": base64.b64encode(p.read_bytes()).decode()} for p in paths]
    page.evaluate(
        """files => {
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.data), c => c.charCodeAt(0));
                transfer.items.add(new File([bytes], f.name, {type: f.type}));
            }
            const zone = document.getElementById('drop-zone');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
            }
        }""",
        files,
    )


def wait_js(page, script: str, arg=None, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Polls the JS function `script(arg)` in the page until it is true. (page.wait_for_function
    evaluates a string in the page, which the console's Content-Security-Policy rightly forbids.)"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(script, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s: {script} ({arg})")
        page.wait_for_timeout(25)


def gallery_labels(page) -> list[str]:
    return page.eval_on_selector_all(ITEM, "items => items.map(i => i.dataset.label)")


def wait_gallery(page, count: int, done: bool = True) -> None:
    """Until `count` items are shown (and, with `done`, the listing is at its end)."""
    wait_js(
        page,
        "([sel, n, done]) => document.querySelectorAll(sel).length === n"
        " && document.getElementById('gallery-status').dataset.loading !== 'true'"
        " && (!done || document.getElementById('gallery-status').dataset.done === 'true')",
        arg=[ITEM, count, done],
    )


def gallery_keys(page) -> list[str]:
    return page.eval_on_selector_all(ITEM, "items => items.map(i => i.dataset.key)")


def check_gallery(page, keys: dict[str, Path], name: str) -> None:
    """The Bucket tab at the root: every photo with its label and a thumbnail; a label filter keeps
    only that label's photos; a click opens the photo large with its top-k."""
    page.click("#tab-bucket")
    wait_gallery(page, len(keys))
    page.locator(f"{ITEM} img.thumb[src^='blob:']").first.wait_for()
    shown = gallery_keys(page)
    assert sorted(shown) == sorted(keys)
    labels = gallery_labels(page)
    # "unknown": the model's detector found the photo unlike all of its classes.
    classes = set(keys[key].parent.name for key in keys) | {"unknown"}
    assert set(labels) <= classes, labels
    right = sum(label == key.split("/")[1] for key, label in zip(shown, labels, strict=True))
    assert right >= 0.7 * len(keys), f"{right}/{len(keys)} labels match their folder"
    shot(page, name)

    label, count = Counter(label for label in labels if label != "unknown").most_common(1)[0]
    page.select_option("#label-filter", label)
    wait_gallery(page, count)
    assert set(gallery_labels(page)) == {label}

    page.locator(f"{ITEM} button.thumb-button").first.click()
    page.wait_for_selector("#photo-dialog[open] #photo-large[src^='blob:']")
    wait_js(page, "() => document.getElementById('photo-large').naturalWidth > 256")
    assert page.locator("#photo-topk [data-testid=bar]").count() >= 1
    shot(page, f"{name}-photo")
    page.click("#photo-close")
    page.select_option("#label-filter", "")


# --- tests ---


def test_dropped_photos_show_their_labels_and_the_first_load_is_small(page, tmp_path):
    """Drop and pick real photos on Classify: each card shows the label and score the API gives
    for the same bytes (sent as they are, not re-encoded), the model version and timings, and a
    curl command for the same request. Records the page weight of the first load and the time from
    a drop to its result; the page fits a phone's width and has a dark theme."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    with serve("--bucket", str(bucket)) as base:
        photos = correct_photos(base, 3)
        client = page.context.new_cdp_session(page)
        client.send("Network.enable")
        transferred: list[int] = []
        client.on("Network.loadingFinished", lambda event: transferred.append(event["encodedDataLength"]))
        responses = []

        def on_response(response):
            responses.append(response)

        page.on("response", on_response)
        started = time.monotonic()
        page.goto(f"{base}/", wait_until="networkidle")
        load_ms = (time.monotonic() - started) * 1000
        wait_js(page, "() => document.getElementById('model-version').textContent.length > 0")
        page.remove_listener("response", on_response)
        first_load_bytes = sum(transferred)
        body_bytes = sum(len(r.body()) for r in responses if 200 <= r.status < 300)
        files = sorted({r.url.removeprefix(base) for r in responses})

        # A real drop of the first photo: the first result.
        (first, answer), *others = photos
        started = time.monotonic()
        drop_files(page, [first])
        wait_done(page, first)
        drop_to_result_ms = (time.monotonic() - started) * 1000
        browser_ms = float(card(page, first).get_attribute("data-total-ms"))

        # The others picked with the file input, classified concurrently.
        page.set_input_files("#file-input", [str(path) for path, _ in others])
        for path, expected in photos:
            wait_done(page, path)
            shown = card(page, path)
            assert shown.get_attribute("data-label") == expected["label"]
            assert shown.locator("[data-testid=result-label]").inner_text() == expected["label"]
            top = shown.locator("[data-testid=bar]").first
            assert top.get_attribute("data-label") == expected["label"]
            # Same bytes, same answer: the score the API gave to requests, to the shown precision.
            assert top.locator(".bar-value").inner_text() == f"{expected['score'] * 100:.1f}%"
            assert shown.locator("[data-testid=bar]").count() == len(expected["top_k"])
            assert expected["version"] in shown.inner_text()
            assert "inference" in shown.inner_text()

        shown = card(page, first)
        curl = shown.locator("[data-testid=curl-text]").text_content()
        assert curl.startswith("curl ") and f"{base}/v1/classify?top_k=5" in curl, curl
        assert f"--data-binary @{first.name}" in curl and "Content-Type: image/jpeg" in curl
        assert "Authorization" not in curl, "no key on this server"
        shown.locator("[data-testid=copy-curl]").click()
        wait_js(page, "() => [...document.querySelectorAll('[data-testid=copy-curl]')].some(b => b.textContent === 'Copied')")

        # An undecodable file shows the API's JSON error on its card.
        broken = tmp_path / "broken.jpg"
        broken.write_bytes(b"not a photo at all")
        page.set_input_files("#file-input", str(broken))
        card(page, broken).and_(page.locator("[data-state=error]")).wait_for()
        assert card(page, broken).locator("[data-testid=result-error]").inner_text()
        shot(page, "classify")

        page.emulate_media(color_scheme="dark")
        shot(page, "classify-dark")
        page.set_viewport_size({"width": 390, "height": 844})
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        shot(page, "classify-phone")
        assert overflow <= 0, f"the page is {overflow} px wider than a phone"

    numbers = {
        "first_load_bytes_transferred": first_load_bytes,
        "first_load_body_bytes": body_bytes,
        "first_load_requests": len(responses),
        "first_load_files": files,
        "first_load_ms": round(load_ms),
        "drop_to_first_result_ms": round(drop_to_result_ms),
        "first_request_in_browser_ms": round(browser_ms),
        "first_photo_bytes": first.stat().st_size,
    }
    (ARTIFACTS / "first-load.json").write_text(json.dumps(numbers, indent=1) + "\n")
    print(
        f"\nconsole first load: {numbers['first_load_bytes_transferred']} bytes transferred"
        f" ({body_bytes} bytes of bodies, {len(responses)} requests, {numbers['first_load_ms']} ms);"
        f" drop to first result: {numbers['drop_to_first_result_ms']} ms"
        f" (request {numbers['first_request_in_browser_ms']} ms in the browser)"
    )
    assert body_bytes < 200_000, numbers


def test_bucket_gallery_of_a_local_folder_pages_filters_and_opens_photos(page, tmp_path):
    """A local folder bucket of 60 photos: the gallery lists one page (48) and the rest only when
    scrolled to its end, with each photo's thumbnail and predicted label; a label filter keeps only
    that label; a photo opens large; folder chips and the breadcrumb navigate; "low confidence
    only" keeps scores below the threshold."""
    bucket = tmp_path / "bucket"
    keys = make_bucket(bucket, per_class=6)
    with serve("--bucket", str(bucket)) as base:
        page.goto(f"{base}/#bucket")
        wait_gallery(page, 48, done=False)
        page.wait_for_timeout(500)
        assert page.locator(ITEM).count() == 48, "one page before scrolling: never everything"
        assert page.locator("#load-more").is_visible()
        page.locator("#gallery-sentinel").scroll_into_view_if_needed()
        wait_gallery(page, len(keys))
        assert page.locator("#load-more").is_hidden()
        page.evaluate("window.scrollTo(0, 0)")
        check_gallery(page, keys, "bucket")
        wait_gallery(page, 48, done=False)  # the filter cleared: the first page again

        # Folders: the root holds photos/, which holds one folder per class; the breadcrumb goes back.
        page.locator("[data-testid=folder-chip][data-prefix='photos/']").click()
        page.locator("[data-testid=folder-chip][data-prefix='photos/cat/']").click()
        wait_gallery(page, 6)
        assert all(key.startswith("photos/cat/") for key in gallery_keys(page))
        assert page.locator("#breadcrumb li").count() == 3
        page.locator("#breadcrumb button", has_text="bucket root").click()
        wait_gallery(page, 48, done=False)

        # Low confidence only: every photo shown scores below the threshold.
        page.fill("#max-score", "0.6")
        page.check("#low-confidence")
        wait_js(page, "() => document.getElementById('gallery-status').dataset.loading === 'false'")
        scores = [float(x) for x in page.eval_on_selector_all(ITEM, "i => i.map(x => x.dataset.score)")]
        assert all(score < 0.6 for score in scores), scores
        print(f"\nlow confidence (< 0.6): {len(scores)} of the first photos listed")


def test_a_folders_dataset_audit_shows_beside_its_photos(page, tmp_path):
    """A folder holding the audit.json of `bestiary dataset audit <folder> --out <folder>` shows a
    Dataset audit panel (summary and suspects); a suspect opens large; a folder without one shows
    no panel."""
    bucket = tmp_path / "bucket"
    keys = make_bucket(bucket, per_class=2)
    cat = sorted(k for k in keys if k.startswith("photos/cat/"))[0]
    audit = {
        "dataset": str(bucket / "photos"),
        "summary": {"photos": len(keys), "cross_validated_accuracy": 0.9, "label_issues": 1, "unknown": 0,
                    "exact_duplicate_groups": 0, "near_duplicate_groups": 1, "leakage_groups": 1},
        "suspects": [{"key": cat.removeprefix("photos/"), "label": "cat", "suggested_label": "dog", "score": 0.87,
                      "reason": "wrong_label", "detail": "out-of-fold: dog 0.87"}],
        "duplicate_groups": [],
    }  # fmt: skip
    (bucket / "photos" / "audit.json").write_text(json.dumps(audit))
    with serve("--bucket", str(bucket)) as base:
        page.goto(f"{base}/#bucket")
        wait_gallery(page, len(keys))
        assert page.locator("#audit").is_hidden(), "the bucket root has no audit"
        page.locator("[data-testid=folder-chip][data-prefix='photos/']").click()
        page.wait_for_selector("[data-testid=audit-suspect]")
        summary = page.inner_text("#audit-summary")
        assert "1 probably mislabelled" in summary and "90" in summary, summary
        row = page.locator("[data-testid=audit-suspect]").first.inner_text()
        assert "cat" in row and "dog" in row and "wrong label" in row and "0.870" in row, row
        page.locator("[data-testid=audit-suspect] button").first.click()
        page.wait_for_selector("#photo-dialog[open] #photo-large[src^='blob:']")
        assert page.inner_text("#photo-title") == cat.removeprefix("photos/")
        page.keyboard.press("Escape")
        page.locator("[data-testid=folder-chip][data-prefix='photos/cat/']").click()
        wait_gallery(page, 2)
        assert page.locator("#audit").is_hidden(), "photos/cat/ has no audit"


def test_bucket_gallery_of_an_s3_bucket(page, s3):
    """The same gallery with `--bucket s3://…` on SeaweedFS: thumbnails, labels, filter, photo."""
    prefix = f"console-{uuid.uuid4().hex[:8]}"
    keys = {}
    for label, paths in animal_photos(2).items():
        for path in paths:
            s3.put(f"{prefix}/photos/{label}/{path.name}", path.read_bytes(), "image/jpeg")
            keys[f"photos/{label}/{path.name}"] = path
    with serve("--bucket", s3.url(prefix), env=s3.container_env()) as base:
        page.goto(f"{base}/")
        check_gallery(page, keys, "bucket-s3")
        assert "s3://" in page.inner_text("#bucket-name")


def test_results_of_a_classify_run_as_a_gallery_with_per_label_counts(page, tmp_path):
    """`bestiary classify <bucket>/photos --out <bucket>/results`, then its JSON Lines opened in
    the gallery: the per-label counts are those of the lines, and a count chip filters by label."""
    bucket = tmp_path / "bucket"
    keys = make_bucket(bucket, per_class=2)
    run = subprocess.run(
        [str(bestiary_bin()), "classify", str(bucket / "photos"), "--out", str(bucket / "results"), "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    parts = [path for path in sorted((bucket / "results").rglob("*.jsonl")) if path.parent.name == "parts"]
    assert parts, sorted(str(p.relative_to(bucket)) for p in (bucket / "results").rglob("*"))
    lines = [json.loads(line) for part in parts for line in part.read_text().splitlines() if line.strip()]
    assert len(lines) == len(keys), lines[:3]
    expected = Counter(line.get("label") or f"error:{error_code(line.get('error'))}" for line in lines)
    with serve("--bucket", str(bucket)) as base:
        page.goto(f"{base}/#bucket")
        page.check("#bucket-mode-results")
        page.fill("#bucket-prefix", "results")
        page.click("#bucket-open")
        page.locator("[data-testid=count-chip]").first.wait_for()
        wait_gallery(page, len(lines))
        chips = page.eval_on_selector_all("[data-testid=count-chip]", "c => c.map(x => [x.dataset.label, +x.dataset.count])")
        assert dict(chips) == dict(expected), (chips, expected)
        assert page.get_attribute("#gallery-status", "data-total") == str(len(lines))
        page.locator(f"{ITEM} img.thumb[src^='blob:']").first.wait_for()
        shot(page, "bucket-results")

        label, count = expected.most_common(1)[0]
        page.locator(f"[data-testid=count-chip][data-label='{label}']").click()
        wait_gallery(page, count)
        assert set(gallery_labels(page)) == {label}
        assert page.get_attribute("#gallery-status", "data-matching") == str(count)
        assert page.get_attribute(f"[data-testid=count-chip][data-label='{label}']", "aria-pressed") == "true"


def test_models_confusion_matrix_cell_shows_its_photos_and_versions_swap(page, tmp_path):
    """Two versions of a tiny model trained here (one epoch each): Models shows the served one's
    training curves, per-class metrics and confusion matrix; clicking a non-empty cell shows that
    many thumbnails of its validation photos; the training report opens; "Serve this version"
    swaps to the older version (the header follows) and "Follow latest" swaps back; a Classify
    card's "Where it looked" shows the heat map of the photo."""
    data = tmp_path / "data"
    make_bucket(data, per_class=4)
    models = tmp_path / "models"
    for seed in ("1", "2"):
        train = subprocess.run(
            [str(bestiary_bin()), "train", "--data", str(data / "photos"), "--out", str(models), "--name", "tiny",
             "--arch", "seed-cnn", "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--seed", seed,
             "--cache-dir", str(tmp_path / "cache")],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert train.returncode == 0, train.stderr[-3000:]
    # --open-admin: the page swaps versions through /admin/*, off on a keyless server by default.
    with serve("--model", str(models / "tiny"), "--bucket", str(data), "--open-admin") as base:
        page.goto(f"{base}/#models")
        page.locator("#versions tbody tr[data-version] >> nth=1").wait_for()
        newest, older = page.eval_on_selector_all("#versions tbody tr[data-version]", "r => r.map(x => x.dataset.version)")
        assert page.inner_text("#model-version") == newest
        page.locator("[data-testid=confusion-cell]").first.wait_for()
        assert page.get_attribute("#version-detail", "data-version") == newest
        classes = page.eval_on_selector_all("#confusion tbody th", "h => h.map(x => x.textContent)")
        assert len(classes) == 10
        assert page.locator("[data-testid=confusion-cell]").count() == 100
        assert page.locator("#class-metrics tbody tr").count() == 10
        assert page.locator("#history-charts svg.chart").count() == 2
        cells = page.eval_on_selector_all(
            "[data-testid=confusion-cell]", "c => c.map(x => [x.dataset.true, x.dataset.predicted, +x.dataset.count])"
        )
        true_label, predicted, count = max(cells, key=lambda c: c[2])
        assert count > 0
        page.locator(f"[data-testid=confusion-cell][data-true='{true_label}'][data-predicted='{predicted}']").click()
        wait_js(page, "n => document.querySelectorAll('[data-testid=cell-photo]').length === n", count)
        page.locator("[data-testid=cell-photo] img[src^='blob:']").first.wait_for()
        assert f"{count} photo" in page.inner_text("#cell-title")
        shot(page, "models")
        if page.locator("#open-report").is_visible():
            page.click("#open-report")
            page.frame_locator("#report-frame").locator("body").wait_for()
            assert page.frame_locator("#report-frame").locator("body").inner_text().strip()
            shot(page, "models-report")

        # The hot swap, confirmed in the browser's dialog.
        page.on("dialog", lambda dialog: dialog.accept())
        page.locator(f"#versions tr[data-version='{older}'] [data-testid=serve-version]").click()
        wait_js(page, "v => document.getElementById('model-version').textContent === v", older)
        assert older in page.inner_text("#serve-outcome")
        page.locator(f"#versions tr[data-version='{older}'] [data-testid=serve-version][disabled]").wait_for()
        page.locator("#follow-latest").click()
        wait_js(page, "v => document.getElementById('model-version').textContent === v", newest)
        page.locator("#follow-latest").wait_for(state="hidden")
        assert requests.get(f"{base}/v1/models/tiny/versions", timeout=10).json()["follows_latest"] is True

        # A model exported with class activation maps: "Where it looked" on a Classify card puts
        # the heat map from /v1/explain in place of the photo, and a second press brings it back.
        photo = next(iter(animal_photos(1).values()))[0]
        page.click("#tab-classify")
        drop_files(page, [photo])
        wait_done(page, photo)
        toggle = card(page, photo).locator("[data-testid=explain-toggle]")
        toggle.click()
        card(page, photo).locator("img[data-explained=true][src^='data:image/png']").wait_for()
        assert toggle.get_attribute("aria-pressed") == "true"
        top_label = card(page, photo).locator("[data-testid=bar]").first.get_attribute("data-label")
        assert card(page, photo).get_attribute("data-explained-label") == top_label
        toggle.click()
        card(page, photo).locator("img[data-explained=false][src^='blob:']").wait_for()


def test_usage_numbers_move_after_requests(page, tmp_path):
    """Usage polls /v1/usage on its own: after three requests sent with `requests`, images
    classified and requests go up within a few seconds, with no reload; the charts are drawn."""
    with serve("--bucket", str(tmp_path)) as base:
        ((photo, answer),) = correct_photos(base, 1)
        page.goto(f"{base}/#usage")
        cell = "[data-testid=usage-images-classified]"
        wait_js(page, "sel => Boolean(document.querySelector(sel).dataset.value)", cell)
        before = float(page.get_attribute(cell, "data-value"))
        requests_before = float(page.get_attribute("[data-testid=usage-requests]", "data-value"))
        for _ in range(3):
            reply = requests.post(f"{base}/v1/classify", data=photo.read_bytes(), headers={"Content-Type": "image/jpeg"}, timeout=60)
            assert reply.status_code == 200, reply.text
        started = time.monotonic()
        wait_js(page, "([sel, n]) => Number(document.querySelector(sel).dataset.value) >= n", [cell, before + 3], 10)
        moved_after_s = time.monotonic() - started
        assert float(page.get_attribute("[data-testid=usage-requests]", "data-value")) >= requests_before + 3
        assert page.locator("#usage-charts svg.chart").count() == 2
        page.locator(f"[data-testid=usage-label][data-label={answer['label']}]").wait_for()
        page.wait_for_timeout(2500)  # one more sample for the charts
        shot(page, "usage")
        print(f"\nusage numbers moved {moved_after_s:.1f} s after the requests")


def test_api_key_prompt_guards_every_data_route(page, tmp_path):
    """With `--api-key`, the page asks for a key; without it the data routes refuse the page's
    requests (401); a wrong key is asked again; after the right key Classify, the gallery's
    thumbnails and Models work (the built-in model has no evaluation, and says so), and the curl
    command names $BESTIARY_API_KEY, never the key."""
    bucket = tmp_path / "bucket"
    keys = make_bucket(bucket, per_class=1)
    with serve("--bucket", str(bucket), "--api-key", "secret") as base:
        page.goto(f"{base}/")
        page.wait_for_selector("#key-dialog[open] #api-key")
        shot(page, "auth-prompt")
        some_key = next(iter(keys))
        statuses = page.evaluate(
            """async key => {
                const routes = ['/v1/models', '/v1/usage', '/v1/bucket/folders?prefix=', '/v1/bucket/photos?prefix=',
                    '/v1/bucket/results?prefix=results', '/v1/thumbnail?key=' + encodeURIComponent(key),
                    '/v1/models/animals/versions'];
                const out = {};
                for (const r of routes) out[r] = (await fetch(r)).status;
                out['POST /v1/classify'] = (await fetch('/v1/classify', {method: 'POST', body: 'x'})).status;
                out['POST /admin/models/animals/serve'] = (await fetch('/admin/models/animals/serve',
                    {method: 'POST', body: '{"version":"latest"}', headers: {'Content-Type': 'application/json'}})).status;
                return out;
            }""",
            some_key,
        )
        assert set(statuses.values()) == {401}, statuses

        page.fill("#api-key", "wrong")
        page.click("#api-key-submit")
        page.wait_for_selector("#key-dialog[open]")
        wait_js(page, "() => document.getElementById('key-message').textContent.includes('refused')")

        page.fill("#api-key", "secret")
        page.click("#api-key-submit")
        wait_js(page, "() => document.getElementById('model-name').textContent === 'animals'")
        assert not page.locator("#key-dialog").evaluate("d => d.open")
        photo = keys[some_key]
        page.set_input_files("#file-input", str(photo))
        wait_done(page, photo)
        curl = card(page, photo).locator("[data-testid=curl-text]").text_content()
        assert "Authorization: Bearer $BESTIARY_API_KEY" in curl and "secret" not in curl, curl
        shot(page, "auth-classify")

        page.click("#tab-bucket")
        wait_gallery(page, len(keys))
        page.locator(f"{ITEM} img.thumb[src^='blob:']").first.wait_for()
        assert page.evaluate("sessionStorage.getItem('bestiary-api-key')") == "secret"
        assert "secret" not in page.evaluate("[...document.querySelectorAll('img')].map(i => i.src).join(' ')")

        # Models, with the key: the built-in model says it has no evaluation to show.
        page.click("#tab-models")
        page.locator("#versions tbody tr[data-version]").wait_for()
        page.locator("#no-evaluation").wait_for()
        assert "no evaluation" in page.inner_text("#no-evaluation")
        shot(page, "models-builtin")
