//! The Kubernetes manifests in deploy/: every resource passes `kubernetes-validate
//! --strict` against Kubernetes 1.30's schemas, offline, the kustomization lists every
//! manifest beside it, and the cluster CA's key reaches the pod's identity step alone,
//! whose script, run here, leaves a node identity that reefd starts with.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use reef_proto::supervisor_client::SupervisorClient;
use reef_tests::{TestNode, binary, venv_bin, workspace_root};
use serde_json::Value;

/// The manifests of the kustomize base, kustomization.yaml aside.
fn manifests() -> Vec<PathBuf> {
    let base = workspace_root().join("deploy/base");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&base)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .filter(|path| !path.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", base.display());
    files
}

#[test]
fn every_manifest_is_valid_kubernetes() {
    for manifest in manifests() {
        let out = Command::new(venv_bin("kubernetes-validate"))
            .args(["--strict", "-k", "1.30"])
            .arg(&manifest)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {report}", manifest.display());
        assert!(
            report.contains("passed"),
            "{}: {report}",
            manifest.display()
        );
    }
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let kustomization =
        std::fs::read_to_string(workspace_root().join("deploy/base/kustomization.yaml")).unwrap();
    for manifest in manifests() {
        let name = manifest.file_name().unwrap().to_str().unwrap();
        assert!(
            kustomization.contains(&format!("- {name}")),
            "kustomization.yaml does not list {name}"
        );
    }
}

/// The StatefulSet's pod template, as JSON (read by the venv's PyYAML, which
/// kubernetes-validate brings).
fn pod_template() -> Value {
    let manifest = workspace_root().join("deploy/base/statefulset.yaml");
    let out = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let set: Value = serde_json::from_slice(&out.stdout).unwrap();
    set["spec"]["template"]["spec"].clone()
}

/// The entries of a JSON array, none if it is absent.
fn each(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// Runs the identity step's script for pod `pod`, with its volumes `/cluster` and
/// `/data` at `cluster` and `data`, and `reef` on the path.
fn run_identity_step(script: &str, pod: &str, cluster: &Path, data: &Path) {
    let script = script
        .replace("/cluster", &cluster.display().to_string())
        .replace("/data", &data.display().to_string());
    let bin = binary("reef").parent().unwrap().to_owned();
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let out = Command::new("/bin/sh")
        .args(["-c", &script])
        .env("POD_NAME", pod)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the identity step failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Hole "Kubernetes mounts the cluster CA key in every pod" (issue "Secure by
/// default"): before, reefd itself mounted the CA's secret, so whoever took over a pod's
/// reefd could mint any identity of the cluster.
#[tokio::test]
async fn only_the_identity_step_holds_the_cluster_ca_key_and_its_node_starts() {
    let pod = pod_template();
    let ca_volumes: Vec<&str> = each(&pod["volumes"])
        .filter(|volume| volume["secret"]["secretName"] == "reef-cluster-ca")
        .filter_map(|volume| volume["name"].as_str())
        .collect();
    assert_eq!(ca_volumes, ["cluster-ca"]);
    let mounts_the_ca = |container: &Value| {
        each(&container["volumeMounts"])
            .any(|mount| ca_volumes.iter().any(|name| mount["name"] == *name))
    };
    for container in each(&pod["containers"]) {
        assert!(!mounts_the_ca(container), "{container}");
        assert!(!container.to_string().contains("/cluster"), "{container}");
    }
    let steps: Vec<&Value> = each(&pod["initContainers"])
        .filter(|container| mounts_the_ca(container))
        .collect();
    assert_eq!(steps.len(), 1, "one init step holds the CA: {pod}");
    let script = steps[0]["args"][0].as_str().expect("the step's script");

    let cluster = tempfile::tempdir().unwrap();
    reef_tls::init_cluster_ca(cluster.path()).unwrap();
    let key = std::fs::read(cluster.path().join("ca-key.pem")).unwrap();
    let mut issued = None;
    let node = TestNode::start_prepared(None, "127.0.0.1", &["--name", "reef-1"], |data| {
        run_identity_step(script, "reef-1", cluster.path(), data);
        let issuer = std::fs::read(data.join("tls/issuer.pem")).expect("an identity");
        // A restarted pod keeps its identity.
        run_identity_step(script, "reef-1", cluster.path(), data);
        assert_eq!(std::fs::read(data.join("tls/issuer.pem")).unwrap(), issuer);
        assert_eq!(
            std::fs::read(data.join("tls/ca.pem")).unwrap(),
            std::fs::read(cluster.path().join("ca.pem")).unwrap(),
            "the main container joins with /data/tls/ca.pem"
        );
        issued = Some(issuer);
    });
    assert!(issued.is_some());
    for file in walk(node.data_dir()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.windows(key.len()).any(|window| window == key),
            "{} holds the cluster CA's key",
            file.display()
        );
    }
    // The node is reef-1 of the cluster: its operator's certificate is believed there.
    let operator =
        reef_tls::issue_client(cluster.path(), &reef_tls::admin_identity("ops")).unwrap();
    let (cert, key) = (
        cluster.path().join("ops.pem"),
        cluster.path().join("ops-key.pem"),
    );
    operator.write(&cert, &key).unwrap();
    let channel = node.options_as(Some((cert, key))).connect().await.unwrap();
    let mut as_operator = SupervisorClient::new(channel);
    as_operator
        .list(reef_proto::ListRequest {})
        .await
        .expect("the cluster's operator is an administrator of reef-1");
    let info = as_operator.info(reef_proto::InfoRequest {}).await.unwrap();
    assert_eq!(info.into_inner().name, "reef-1");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        match entry.file_type().unwrap().is_dir() {
            true => files.extend(walk(&path)),
            false => files.push(path),
        }
    }
    files
}
