//! `reef.v1.Files` on a real reefd over TLS, through the CLI and the gRPC client: a
//! local directory and memory behind OpenDAL, streaming, paging, confinement, limits.

use std::process::{Command, Output};

use reef_proto::{
    FileInfo, ListFilesRequest, ReadFileRequest, StatFileRequest, WriteFileRequest, WriteFileStart,
    files_client::FilesClient, write_file_request::Part,
};
use reef_tests::{LocalS3, TestNode, binary};
use tokio_stream::StreamExt as _;
use tonic::{Code, Status, transport::Channel};

fn succeeded(output: Output) -> String {
    assert!(
        output.status.success(),
        "reef failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn files(node: &TestNode) -> FilesClient<Channel> {
    FilesClient::new(node.options().connect().await.unwrap())
}

/// Writes `parts` after a start naming `path`.
async fn write(
    files: &mut FilesClient<Channel>,
    path: &str,
    parts: Vec<Option<Part>>,
) -> Result<FileInfo, Status> {
    let mut messages = vec![WriteFileRequest {
        part: Some(Part::Start(WriteFileStart {
            path: path.to_owned(),
            if_absent: false,
        })),
    }];
    messages.extend(parts.into_iter().map(|part| WriteFileRequest { part }));
    files
        .write(tokio_stream::iter(messages))
        .await
        .map(tonic::Response::into_inner)
}

async fn read(files: &mut FilesClient<Channel>, path: &str, offset: u64, length: u64) -> Vec<u8> {
    let mut chunks = files
        .read(ReadFileRequest {
            path: path.to_owned(),
            offset,
            length,
        })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.data.len() <= reef_node::FILE_CHUNK);
        bytes.extend_from_slice(&chunk.data);
    }
    bytes
}

async fn stat_code(files: &mut FilesClient<Channel>, path: &str) -> Code {
    match files
        .stat(StatFileRequest {
            path: path.to_owned(),
        })
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn a_directory_store_streams_pages_and_confines_paths() {
    let node = TestNode::start_with(&["--files-max-bytes", "5000000"]);
    let root = node.data_dir().join("files");
    let local = tempfile::tempdir().unwrap();

    // Several chunks each way, through the CLI.
    let original: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let upload = local.path().join("big.bin");
    std::fs::write(&upload, &original).unwrap();
    succeeded(node.reef(&["files", "put", upload.to_str().unwrap(), "docs/big.bin"]));
    assert_eq!(std::fs::read(root.join("docs/big.bin")).unwrap(), original);
    let download = local.path().join("got.bin");
    succeeded(node.reef(&["files", "get", "docs/big.bin", download.to_str().unwrap()]));
    assert_eq!(std::fs::read(&download).unwrap(), original);
    let mut files = files(&node).await;
    assert_eq!(
        read(&mut files, "/docs/big.bin", 1_000_000, 10).await,
        original[1_000_000..1_000_010]
    );
    let info = files
        .stat(StatFileRequest {
            path: "docs/big.bin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.size, info.dir), (3_000_000, false));
    assert!(info.modified_unix_ms > 0);

    // Copy, move, list in pages, delete.
    succeeded(node.reef(&["files", "cp", "docs/big.bin", "docs/copy.bin"]));
    succeeded(node.reef(&["files", "mv", "docs/copy.bin", "moved.bin"]));
    for name in ["c", "a", "b"] {
        write(
            &mut files,
            &format!("docs/{name}.txt"),
            vec![Some(Part::Data(name.into()))],
        )
        .await
        .unwrap();
    }
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = files
            .list(ListFilesRequest {
                path: "docs".into(),
                recursive: false,
                limit: 2,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        listed.extend(page.entries.into_iter().map(|e| e.path));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        listed,
        ["docs/a.txt", "docs/b.txt", "docs/big.bin", "docs/c.txt"]
    );
    let everything = succeeded(node.reef(&["files", "ls", "-r"]));
    assert!(
        everything.contains("moved.bin") && everything.contains("docs/c.txt"),
        "{everything}"
    );
    let refused = node.reef(&["files", "rm", "docs"]);
    assert!(!refused.status.success());
    succeeded(node.reef(&["files", "rm", "-r", "docs"]));
    assert_eq!(stat_code(&mut files, "docs/a.txt").await, Code::NotFound);
    assert!(!root.join("docs").exists());

    // Nothing leaves the root.
    let outside = node.data_dir().join("escaped.txt");
    for path in [
        "../escaped.txt",
        "a/../../escaped.txt",
        "/../escaped.txt",
        "a//b",
        "a\\b",
    ] {
        let refused = write(&mut files, path, vec![Some(Part::Data("x".into()))])
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{path}: {refused:?}");
        assert_eq!(stat_code(&mut files, path).await, Code::InvalidArgument);
    }
    assert!(!outside.exists());

    // A file over the limit, or a write that breaks off, leaves nothing behind.
    let refused = write(
        &mut files,
        "huge.bin",
        (0..25)
            .map(|_| Some(Part::Data(vec![0u8; 256 << 10].into())))
            .collect(),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let refused = write(
        &mut files,
        "broken.bin",
        vec![Some(Part::Data("half".into())), None],
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    for path in ["huge.bin", "broken.bin"] {
        assert_eq!(stat_code(&mut files, path).await, Code::NotFound, "{path}");
    }
    let partial = node.data_dir().join("files.partial");
    assert_eq!(
        std::fs::read_dir(&partial).unwrap().count(),
        0,
        "no partial file kept"
    );
    let missing = files
        .read(ReadFileRequest {
            path: "nothing".into(),
            offset: 0,
            length: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn a_memory_store_copies_and_moves_without_native_support() {
    let node = TestNode::start_with(&["--files", "memory"]);
    let mut files = files(&node).await;
    let body: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
    // One message larger than two chunks is refused; chunked, the file is accepted.
    let oversized = write(
        &mut files,
        "a/one.bin",
        vec![Some(Part::Data(body.clone().into()))],
    )
    .await
    .unwrap_err();
    assert_eq!(oversized.code(), Code::OutOfRange, "{oversized:?}");
    let parts = body
        .chunks(reef_node::FILE_CHUNK)
        .map(|chunk| Some(Part::Data(chunk.to_vec().into())))
        .collect();
    write(&mut files, "a/one.bin", parts).await.unwrap();
    succeeded(node.reef(&["files", "cp", "a/one.bin", "a/two.bin"]));
    succeeded(node.reef(&["files", "mv", "a/two.bin", "b/three.bin"]));
    assert_eq!(read(&mut files, "b/three.bin", 0, 0).await, body);
    assert_eq!(stat_code(&mut files, "a/two.bin").await, Code::NotFound);
    let listed = succeeded(node.reef(&["files", "ls", "-r"]));
    assert!(
        listed.contains("a/one.bin") && listed.contains("b/three.bin"),
        "{listed}"
    );
    // Nothing was written to the data dir.
    assert!(!node.data_dir().join("files/a").exists());
}

/// An S3-compatible object store (a local moto server): the same operations through
/// the CLI and the gRPC client, with the objects under the configured root in the
/// bucket, and nothing on the node's disk.
#[tokio::test]
async fn an_object_store_keeps_files_in_a_bucket() {
    let s3 = LocalS3::start();
    s3.create_bucket("reef-files");
    let spec = format!(
        "s3://reef-files/node-1?endpoint={}&region=us-east-1",
        s3.endpoint
    );
    // moto takes any key, but not unsigned reads.
    let node = TestNode::start_with_env(
        &["--files", &spec],
        &[
            ("AWS_ACCESS_KEY_ID", "reef-test"),
            ("AWS_SECRET_ACCESS_KEY", "reef-test"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let local = dir.path().join("photo.bin");
    std::fs::write(&local, &body).unwrap();

    succeeded(node.reef(&[
        "files",
        "put",
        &local.display().to_string(),
        "album/photo.bin",
    ]));
    let mut files = files(&node).await;
    assert_eq!(read(&mut files, "album/photo.bin", 0, 0).await, body);
    assert_eq!(
        read(&mut files, "album/photo.bin", 1000, 10).await,
        body[1000..1010]
    );
    succeeded(node.reef(&["files", "cp", "album/photo.bin", "album/copy.bin"]));
    succeeded(node.reef(&["files", "mv", "album/copy.bin", "archive/moved.bin"]));
    assert_eq!(read(&mut files, "archive/moved.bin", 0, 0).await, body);
    assert_eq!(
        stat_code(&mut files, "album/copy.bin").await,
        Code::NotFound
    );
    let listed = succeeded(node.reef(&["files", "ls", "-r"]));
    assert!(
        listed.contains("album/photo.bin") && listed.contains("archive/moved.bin"),
        "{listed}"
    );
    // The objects are in the bucket, under the root.
    let mut keys = s3.keys("reef-files");
    keys.retain(|key| !key.ends_with('/'));
    keys.sort();
    assert_eq!(keys, ["node-1/album/photo.bin", "node-1/archive/moved.bin"]);
    // Paths cannot leave the root here either.
    let escape = write(&mut files, "../other/x", vec![]).await.unwrap_err();
    assert_eq!(escape.code(), Code::InvalidArgument);
    succeeded(node.reef(&["files", "rm", "-r", "archive"]));
    assert_eq!(
        stat_code(&mut files, "archive/moved.bin").await,
        Code::NotFound
    );
    assert!(!node.data_dir().join("files/album").exists());
}

#[tokio::test]
async fn policies_cover_files_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[policy]]\nname = \"shared-files\"\nwho = [\"client:*\"]\nmay = [\"read\", \"write\"]\non = [\"files:shared/*\"]\n",
    )
    .unwrap();
    let node = TestNode::start_with(&["--policy", policy.to_str().unwrap()]);
    succeeded(
        Command::new(binary("reef"))
            .args(["ca", "client", "eve", "--ca-dir"])
            .arg(node.data_dir().join("tls"))
            .arg("--out")
            .arg(dir.path())
            .output()
            .unwrap(),
    );
    let eve = node.options_as(Some((
        dir.path().join("eve.pem"),
        dir.path().join("eve-key.pem"),
    )));
    let mut as_eve = FilesClient::new(eve.connect().await.unwrap());
    write(
        &mut as_eve,
        "shared/notes.txt",
        vec![Some(Part::Data("ok".into()))],
    )
    .await
    .unwrap();
    let denied = write(
        &mut as_eve,
        "private/key",
        vec![Some(Part::Data("no".into()))],
    )
    .await
    .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("files:private/key"), "{denied:?}");
    // The admin is above policies.
    let mut as_admin = files(&node).await;
    assert_eq!(read(&mut as_admin, "shared/notes.txt", 0, 0).await, b"ok");
}
