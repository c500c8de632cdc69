//! `bestiary dataset audit` as a user runs it: JSON on stdout, the HTML page and `--out`'s
//! `audit.json`/`audit.html`, then the table from the cache.

use std::process::Command;

use bestiary_testkit::photos::write_class_folders;

#[test]
fn audit_prints_json_writes_the_reports_and_flags_a_moved_photo() {
    let Some(reference) = bestiary_testkit::shared::reference_weights() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    write_class_folders(data.path(), &["amber", "blue", "green"], 10, (72, 72));
    // A blue photo filed under amber.
    std::fs::rename(
        data.path().join("blue/blue_003.jpg"),
        data.path().join("amber/moved.jpg"),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let html = work.path().join("report/audit-page.html");
    let out = work.path().join("published");
    let run = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bestiary"));
        command
            .args(["dataset", "audit", data.path().to_str().unwrap()])
            .args(["--pretrained", reference.to_str().unwrap()])
            .args(["--cache", work.path().join("cache").to_str().unwrap()])
            .args(["--epochs", "20"])
            .args(extra)
            .env_remove("AWS_ENDPOINT_URL");
        let output = command.output().expect("run bestiary");
        assert!(
            output.status.success(),
            "failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };

    let text = run(&[
        "--json",
        "--html",
        html.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["summary"]["photos"], 30, "{text}");
    assert_eq!(report["classes"].as_array().unwrap().len(), 3);
    let accuracy = report["summary"]["cross_validated_accuracy"]
        .as_f64()
        .unwrap();
    assert!(accuracy > 0.8, "{accuracy}");
    let suspects = report["suspects"].as_array().unwrap();
    let first = &suspects[0];
    assert_eq!(first["reason"], "wrong-label", "{text}");
    assert!(
        first["key"].as_str().unwrap().ends_with("amber/moved.jpg"),
        "{text}"
    );
    assert_eq!(first["label"], "amber");
    assert_eq!(first["suggested_label"], "blue");
    assert!(first["url"].as_str().unwrap().ends_with("moved.jpg"));
    assert!(first["score"].as_f64().unwrap() > 0.5);

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("data:image/jpeg;base64,"), "no thumbnails");
    assert!(page.contains("amber/moved.jpg"));
    let published: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("audit.json")).unwrap()).unwrap();
    assert_eq!(published["suspects"], report["suspects"]);
    assert!(out.join("audit.html").is_file());

    // From the cache: no backbone, the same ranking, as a table.
    let table = run(&[]);
    assert!(table.contains("Cross-validated accuracy"), "{table}");
    assert!(
        table.contains("0 features computed (all cached)"),
        "{table}"
    );
    let first_row = table
        .lines()
        .find(|line| line.trim_start().starts_with("1  "))
        .unwrap_or_default();
    assert!(
        first_row.contains("wrong-label") && first_row.contains("moved.jpg"),
        "{table}"
    );
}
