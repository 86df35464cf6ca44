//! The monitoring files under `deploy/` match the server: every metric the Grafana
//! dashboard and the alert rules use is one a live server exports (scraped after a
//! register, a fetch and some ledger calls), the Prometheus operator's copy of the rules
//! is the same as the plain rules file, and the Kubernetes ConfigMap's configuration is
//! one the server accepts.

use stagecache_client::stages::StageFile;
use stagecache_proto::v1::{PlanRequest, RecordRequest, StageStatus};
use stagecache_tests::{pipeline_file, register_and_fetch, scrape_metrics, ServerProcess};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn deploy(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

fn yaml_docs(rel: &str) -> Vec<serde_norway::Value> {
    let text = std::fs::read_to_string(deploy(rel)).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| <serde_norway::Value as serde::Deserialize>::deserialize(d).unwrap())
        .collect()
}

/// Every `stagecache_*` name in a PromQL expression.
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(i) = rest.find("stagecache_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
}

/// The `expr` of every panel target of the dashboard.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("grafana/stagecache-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// The alert rules of the plain rules file.
fn rules() -> serde_norway::Value {
    yaml_docs("prometheus/stagecache-alerts.yaml")
        .remove(0)
        .get("groups")
        .cloned()
        .unwrap()
}

fn rule_exprs() -> Vec<String> {
    let mut out = Vec::new();
    for g in rules().as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            out.push(r["expr"].as_str().unwrap().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_metrics_the_server_exports() {
    let server = ServerProcess::start_fresh_with_args(&["--metrics-listen", "127.0.0.1:0"]);
    let client = server.client("prod").await;
    let manifest = register_and_fetch(&client, "bar/1", &[("a.bin", b"dashboard")]).await;
    let file = StageFile::load(std::path::Path::new(&pipeline_file(
        "validate-publish.stages.yaml",
    )))
    .unwrap();
    client
        .record(RecordRequest {
            subject: Some(manifest.to_proto()),
            stage: file.stages[0].name.clone(),
            status: StageStatus::Succeeded as i32,
            build_id: "run-1".into(),
            actor: "pipeline".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .plan(PlanRequest {
            subject: Some(manifest.to_proto()),
            graph: Some(file.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap();
    let exported: BTreeSet<String> = scrape_metrics(&server.metrics_url())
        .await
        .into_keys()
        .map(|k| k.split('{').next().unwrap().to_string())
        .collect();

    let mut used = BTreeSet::new();
    let (dash, alerts) = (dashboard_exprs(), rule_exprs());
    assert!(dash.len() >= 15 && alerts.len() >= 6, "{dash:?} {alerts:?}");
    for e in dash.iter().chain(&alerts) {
        metric_names(e, &mut used);
    }
    assert!(used.len() >= 15, "{used:?}");
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "used by deploy/ but not exported: {unknown:?}\nexported: {exported:?}"
    );
}

#[test]
fn the_operator_rules_are_the_plain_rules_and_the_configmap_is_a_valid_configuration() {
    let monitoring = yaml_docs("kubernetes/monitoring.yaml");
    let rule = monitoring
        .iter()
        .find(|d| d["kind"].as_str() == Some("PrometheusRule"))
        .expect("a PrometheusRule");
    assert_eq!(rule["spec"]["groups"], rules());
    let monitor = monitoring
        .iter()
        .find(|d| d["kind"].as_str() == Some("ServiceMonitor"))
        .expect("a ServiceMonitor");

    let docs = yaml_docs("kubernetes/stagecache.yaml");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for k in ["ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
    let config_map = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap"))
        .unwrap();
    let toml = config_map["data"]["stagecache.toml"].as_str().unwrap();
    let config = stagecache_server::config::FileConfig::parse(toml).unwrap();
    let metrics = config
        .metrics_listen
        .expect("the manifest turns metrics on");
    // The ports the manifest names are the ones the configuration listens on.
    let service = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Service"))
        .unwrap();
    let port = |name: &str| {
        service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["port"].as_u64())
            .unwrap_or_else(|| panic!("no {name} port"))
    };
    assert_eq!(port("metrics"), u64::from(metrics.port()));
    assert_eq!(port("grpc"), u64::from(config.listen.unwrap().port()));
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"].as_str(),
        Some("metrics")
    );
    // The service the monitor selects carries its labels.
    let wanted = &monitor["spec"]["selector"]["matchLabels"];
    for (k, v) in wanted.as_mapping().unwrap() {
        assert_eq!(&service["metadata"]["labels"][k.as_str().unwrap()], v);
    }
}
