"""Figure 8: how far the built-in model's answers can be trusted, measured in the run, one value a
row (no peer): the cross-validated top-1 of the shipped recipe (ImageNet prior + linear head) and
of the alternatives `default-model/compare.py` weighs (onnxruntime features, numpy heads, called
as a function); Bestiary's own out-of-fold accuracy and calibration error before/after the
fitted temperature (`bestiary dataset audit`); the built-in model's top-1, calibration error
plain and at its temperature, and "unknown" rejections under `bestiary eval --precision fp32`
and `--precision int8`, with how often the two graphs agree; and its "none of my classes"
detector (`default-model/ood.py`, through `bestiary classify`, int8 as served by default and
fp32): AUROC against generated non-animal images and the acceptance/rejection rates at the
shipped threshold."""

import importlib.util
import json
import os
import subprocess

from . import data
from .common import BENCH, BESTIARY, ROOT, SHARED, WORK, log, measurement, run
from .fig_engine import version_dir

FIGURE = "8 trust"
SOURCE = os.path.join(SHARED, "data", "animals10", "images")
CATS_AND_DOGS = os.path.join(SHARED, "data", "cats_and_dogs_filtered", "validation")
WEIGHTS = os.path.join(SHARED, "models", "efficientnet_lite0", "efficientnet_lite0.safetensors")
# compare.py's names of what scripts/build-default-model trains (`--imagenet-prior`, no flipped
# copies). Its numpy head's weight decay is no AdamW weight decay, so both of its rows stand for
# the recipe (the README quotes the 0.01 one).
SHIPPED = "head + prior, weight decay "


def default_model(name):
    """bench/default-model/<name>.py as a module (its folder name is no package name)."""
    spec = importlib.util.spec_from_file_location(f"default_model_{name}", os.path.join(BENCH, "default-model", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def json_output(result):
    if not result.ok:
        raise RuntimeError(result.fail_reason())
    text = "\n".join(line for _, line in result.lines)
    return json.loads(text[text.index("{"):])


def photos(root):
    """Photos under `root` (data.py's folders also hold a `.complete` marker)."""
    return sum(1 for _, _, files in os.walk(root) for f in files if not f.startswith("."))


def pct(x):
    return None if x is None else 100 * x


def guarded(rows, workload, settings, measure):
    """Appends the rows `measure()` returns; when it fails, one row carrying the error, so the
    table shows what is missing, the run fails, and the other parts still run."""
    try:
        rows += measure()
    except Exception as error:  # noqa: BLE001 - reported in the table
        log(f"  [trust] {workload}: FAILED: {str(error)[:400]}")
        rows.append(measurement(FIGURE, workload, settings, "every figure of this part", "", error=f"{type(error).__name__}: {error}"))


def figure(cfg, ctx):
    rows = []
    quick = cfg.quick
    animals = data.animals(quick)  # quick: 10 photos a class, in train/ and validation/
    env = {**os.environ, **cfg.bestiary_env}
    model_json = os.path.join(version_dir(os.path.join(ROOT, "models", "animals")), "model.json")
    with open(model_json) as f:
        shipped = json.load(f)
    unknown = shipped["calibration"]["unknown"]

    # 1. The recipe, cross-validated (compare.py's numpy replica of the trained heads).
    seeds, folds, per_class = (1, 3, 10) if quick else (4, 5, None)
    workload = "recipes, cross-validated (default-model/compare.py)"
    settings = {"photos": f"animals10, {'the first 10 of each class' if quick else 'all of them'}",
                "cross-validation": f"stratified {folds}-fold, {seeds} seed{'s' if seeds > 1 else ''} (mean, ± their standard deviation)",
                "features": "ImageNet EfficientNet-Lite0 ONNX in onnxruntime (Python), 224 px",
                "heads": "full-batch softmax regression on the frozen features, as the trained head",
                "shipped recipe": "head + prior, no flips (`--imagenet-prior`, what scripts/build-default-model trains; "
                                  "the weight decay of compare.py's full-batch numpy head is not the trainer's AdamW 1e-4, "
                                  "so both of its rows stand for it)",
                "cats_and_dogs": "not run (quick)" if quick else "1,000 validation photos, heads trained on every animals10 photo"}
    compare = default_model("compare")

    def recipes():
        log("  [trust] compare.py: features of the photos, then the heads")
        out = []
        for r in compare.measure(SOURCE, None if quick else CATS_AND_DOGS, seeds=seeds, folds=folds, per_class=per_class):
            if r["spread"] is None:
                detail = ["no training: every photo"]
            else:
                detail = [f"± {pct(r['spread']):.1f} points" if seeds > 1 else "one seed"]
            if r["cats_and_dogs"] is not None:
                detail.append(f"cats_and_dogs {pct(r['cats_and_dogs']):.1f}%")
            shipped_mark = " **(shipped recipe)**" if r["candidate"].startswith(SHIPPED) else ""
            out.append(measurement(FIGURE, workload, settings, f"top-1, {r['candidate']}{shipped_mark}", "%",
                                   pct(r["accuracy"]), detail="; ".join(detail)))
        return out

    guarded(rows, workload, settings, recipes)

    # 2. Bestiary's own cross-validation and calibration: `dataset audit` (a plain head per fold).
    audit_folds, audit_epochs = (3, 10) if quick else (5, 30)
    workload = "out-of-fold, Bestiary (`dataset audit`)"
    audit_data = animals if quick else SOURCE
    settings = {"photos": f"animals10, {photos(audit_data)} photos",
                "cross-validation": f"{audit_folds} folds, a linear head per fold ({audit_epochs} epochs) on the frozen ImageNet "
                                    "EfficientNet-Lite0 features, no ImageNet prior; temperature fitted on the out-of-fold logits",
                "ECE": "expected calibration error of the top score"}

    def audit():
        log("  [trust] bestiary dataset audit")
        summary = json_output(run([BESTIARY, "--quiet", "dataset", "audit", audit_data, "--pretrained", WEIGHTS,
                                   "--cache", os.path.join(WORK, "cache", "trust-audit"), "--folds", audit_folds,
                                   "--epochs", audit_epochs, "--json"], env=cfg.bestiary_env))["summary"]
        t = summary.get("temperature")
        return [
            measurement(FIGURE, workload, settings, "top-1, out-of-fold", "%", pct(summary["cross_validated_accuracy"]),
                        detail=f"{summary['audited']} photos, {summary['folds']} folds"),
            measurement(FIGURE, workload, settings, "ECE before temperature scaling", "%", pct(summary.get("ece_before")),
                        error=None if t else "too few photos to fit a temperature"),
            measurement(FIGURE, workload, settings, "ECE after temperature scaling", "%", pct(summary.get("ece_after")),
                        detail=f"temperature {t:.3f}" if t else None, error=None if t else "too few photos to fit a temperature"),
        ]

    guarded(rows, workload, settings, audit)

    # 3. The built-in model under `eval`, fp32 and int8 graphs.
    eval_data = animals if quick else SOURCE

    def evaluate(precision, split):
        return json_output(run([BESTIARY, "--quiet", "eval", "--model", "builtin", "--data", eval_data, "--precision", precision,
                                "--split", split, "--json", "--cache-dir", os.path.join(WORK, "cache", "trust-eval")],
                               env=cfg.bestiary_env))

    workload = "built-in model, `eval`, every photo"
    settings = {"photos": f"animals10, {photos(eval_data)} photos ({shipped['dataset']['train']} of the 240 trained the head, "
                          f"{shipped['dataset']['validation']} fitted the temperature: optimistic figures)",
                "engine": "onnxruntime; fp32: model.onnx, int8: model.int8.onnx (`--precision`)",
                "calibration": f"the model's temperature {shipped['calibration']['temperature']:.3f} and "
                               f"{unknown['method']} threshold {unknown['threshold']:.3f} (model.json)"}

    def eval_all():
        out, answers = [], {}
        for precision in ("fp32", "int8"):
            log(f"  [trust] bestiary eval --precision {precision}")
            report = evaluate(precision, "all")
            c = report["calibration"]
            answers[precision] = {p["id"]: p["predicted_label"] for p in report["predictions"]}
            wrong = report["images"] - round(report["top1"] * report["images"])
            out += [
                measurement(FIGURE, workload, settings, f"top-1, {precision}", "%", pct(report["top1"]),
                            detail=f"{wrong} of {report['images']} wrong"),
                measurement(FIGURE, workload, settings, f"ECE plain, {precision}", "%", pct(c["ece_uncalibrated"])),
                measurement(FIGURE, workload, settings, f"ECE at the model's temperature, {precision}", "%", pct(c["ece_calibrated"]),
                            detail=f"temperature {c['temperature']:.3f}" if c.get("temperature") else None,
                            error=None if c.get("ece_calibrated") is not None else "the model has no calibration"),
                measurement(FIGURE, workload, settings, f"photos rejected as unknown, {precision}", "%", pct(c["rejected_as_unknown"]),
                            detail=(f"{round(c['rejected_as_unknown'] * report['images'])} of {report['images']}"
                                    if c.get("rejected_as_unknown") is not None else None),
                            error=None if c.get("rejected_as_unknown") is not None else "the model has no detector"),
            ]
        common = sorted(set(answers["fp32"]) & set(answers["int8"]))
        same = sum(answers["fp32"][i] == answers["int8"][i] for i in common)
        out.append(measurement(FIGURE, workload, settings, "fp32 and int8 give the same label", "%",
                               100 * same / len(common) if common else None, detail=f"{same} of {len(common)} photos",
                               error=None if common else "no photo in both evaluations"))
        return out

    guarded(rows, workload, settings, eval_all)

    workload = "built-in model, `eval --split validation`"
    settings = {"photos": ("the quick folder's validation photos" if quick else
                           f"the {shipped['dataset']['validation']} validation photos of the model's split (split seed 42), "
                           "those its temperature and threshold were fitted on"),
                "engine": "onnxruntime, fp32 (model.onnx)"}

    def eval_validation():
        log("  [trust] bestiary eval --split validation --precision fp32")
        report = evaluate("fp32", "validation")
        c = report["calibration"]
        return [
            measurement(FIGURE, workload, settings, "top-1, fp32", "%", pct(report["top1"]), detail=f"{report['images']} photos"),
            measurement(FIGURE, workload, settings, "ECE plain, fp32", "%", pct(c["ece_uncalibrated"])),
            measurement(FIGURE, workload, settings, "ECE at the model's temperature, fp32", "%", pct(c["ece_calibrated"]),
                        detail=f"model.json: {pct(shipped['calibration']['ece_before']):.1f}% → {pct(shipped['calibration']['ece_after']):.1f}%",
                        error=None if c.get("ece_calibrated") is not None else "the model has no calibration"),
        ]

    guarded(rows, workload, settings, eval_validation)

    # 4. "None of my classes": ood.py, through `bestiary classify` (the default precision, auto).
    generated = 14 if quick else 70
    ood_photos = animals if quick else SOURCE
    workload = "\"none of my classes\" (default-model/ood.py)"
    settings = {"in-distribution": f"animals10, {photos(ood_photos)} photos",
                "out-of-distribution": f"{generated} generated non-animal images (plain colours, gradients, noise, stripes, "
                                       "checkerboards, text, shapes)",
                "classify": "`bestiary classify --model builtin` with BESTIARY_PRECISION auto (the default: int8 in onnxruntime) "
                            "and fp32",
                "threshold": f"{unknown['method']} {unknown['threshold']:.3f} (model.json)"}

    def ood():
        out = []
        # auto is what classify runs by default (int8 in onnxruntime for the built-in model).
        for precision in ("auto", "fp32"):
            log(f"  [trust] ood.py: bestiary classify (precision {precision}) on photos and generated images")
            m = default_model("ood").measure(BESTIARY, "builtin", ood_photos, generated, env={**env, "BESTIARY_PRECISION": precision},
                                             stdout=subprocess.DEVNULL)
            graph = "int8 (default)" if precision == "auto" else precision
            out += [
                measurement(FIGURE, workload, settings, f"AUROC of unknown_score, {graph}", "", m["auroc"],
                            detail=f"{m['photos']} photos against {m['generated']} generated images"),
                measurement(FIGURE, workload, settings, f"photos accepted at the threshold, {graph}", "%",
                            100 * m["accepted"] / m["photos"], detail=f"{m['accepted']} of {m['photos']}"),
                measurement(FIGURE, workload, settings, f"generated images rejected, {graph}", "%",
                            100 * m["rejected"] / m["generated"], detail=f"{m['rejected']} of {m['generated']}"),
            ]
        return out

    guarded(rows, workload, settings, ood)
    return rows
