//! A local S3-compatible server for the object-store tests: moto's server, from the
//! Python venv that `scripts/test` creates (PyPI `moto[server]`), on a loopback port.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
};

use crate::{ChildGuard, STARTUP, lines_of, unused_port, venv_bin, wait_for_line};

/// A running moto server, killed when dropped.
pub struct LocalS3 {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    port: u16,
    _process: ChildGuard,
}

impl LocalS3 {
    /// Starts the server and waits until it listens.
    pub fn start() -> Self {
        let port = unused_port();
        let mut process = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server starts");
        // Werkzeug says so on stderr once it listens (and logs each request there after).
        let lines = lines_of(process.stderr.take().expect("stderr was piped"));
        let process = ChildGuard(process);
        wait_for_line(&lines, " * Running on", STARTUP);
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            _process: process,
        }
    }

    /// Creates `bucket` (unsigned, as moto accepts).
    pub fn create_bucket(&self, bucket: &str) {
        let answer = self
            .http("PUT", &format!("/{bucket}"))
            .expect("moto answers");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    /// The keys in `bucket` (ListObjectsV2), as the server reports them.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let answer = self
            .http("GET", &format!("/{bucket}?list-type=2"))
            .expect("moto answers");
        answer
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    fn http(&self, method: &str, path: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            self.port
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }
}
