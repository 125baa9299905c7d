//! The Kubernetes manifests in deploy/: every resource passes `kubernetes-validate
//! --strict` against Kubernetes 1.30's schemas, offline, and the kustomization lists
//! every manifest beside it.

use std::{path::PathBuf, process::Command};

use reef_tests::{venv_bin, workspace_root};

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
