//! Every report the repository holds reads with the current code: schema-1 files (no `schema` field)
//! are upgraded with the values they were made with; a newer schema is refused.

use dnd_experiment::{Report, REPORT_SCHEMA};
use std::path::Path;

fn committed_reports() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../results/experiment");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().join("report.json"))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn committed_reports_of_schema_1_are_upgraded() {
    let reports = committed_reports();
    assert!(reports.len() >= 10, "{} reports", reports.len());
    for path in reports {
        let text = std::fs::read_to_string(&path).unwrap();
        let r = Report::from_json(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(r.schema, REPORT_SCHEMA);
        let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
        let scale = raw["offset_scale"].as_f64().unwrap_or(1.0);
        assert_eq!(r.offset_scale, scale, "{}", path.display());
        assert!(!r.targets.is_empty() && !r.markdown().is_empty());
        // Written and read again, a report is the same report.
        let again = Report::from_json(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            serde_json::to_value(&r).unwrap()
        );
    }
}

#[test]
fn a_newer_schema_or_a_non_report_is_refused() {
    let path = committed_reports().remove(0);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["schema"] = (REPORT_SCHEMA + 1).into();
    let e = Report::from_json(&v.to_string()).unwrap_err();
    assert!(e.contains("report schema"), "{e}");
    assert!(Report::from_json("[1, 2]").is_err());
    assert!(Report::from_json("{\"schema\": 2}").is_err());
}
