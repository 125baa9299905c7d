//! OS processes: spawning a container in its own process group with its environment
//! and log file, signalling the group, and learning when a process ends, whether the
//! node spawned it or adopted it after a restart of its own.

use std::{
    ffi::OsString,
    fs::OpenOptions,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{io::unix::AsyncFd, process::Command};

use super::ProcessSpec;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It ended while the node was away (an adopted process): the status is lost.
    Unknown,
}

impl Exit {
    fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            (None, None) => Exit::Unknown,
        }
    }

    /// Exit code 0: the end OTP calls `normal`.
    pub fn is_normal(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(signal) => match Signal::try_from(*signal) {
                Ok(signal) => write!(f, "killed by {signal}"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
            Exit::Unknown => {
                f.write_str("ended (status unknown: the process was adopted after a node restart)")
            }
        }
    }
}

/// A running process the supervisor can recognise again after its own restart: the
/// pid alone could have been reused, the pid with its start time cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessId {
    /// The OS process id, also its process group id.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
}

impl ProcessId {
    /// Reads the identity of a live process; `None` if it is gone or a zombie.
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may contain spaces and parentheses: fields follow the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            return None;
        }
        let start_time = fields.get(19)?.parse().ok()?;
        Some(Self { pid, start_time })
    }

    /// Whether this very process still runs.
    pub fn is_alive(&self) -> bool {
        Self::of(self.pid).is_some_and(|now| now == *self)
    }
}

/// Why a process could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program was not found.
    #[error("cannot find the program {0:?} next to reefd or on PATH")]
    NotFound(String),
    /// The OS refused.
    #[error("cannot start {program}: {source}")]
    Os {
        /// The resolved program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The container's certificate could not be handed to its user.
    #[error("cannot give the container's user its certificate {path}: {source}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The log file could not be opened.
    #[error("cannot open the log file {path}: {source}")]
    Log {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Finds `command`: a path as given; a bare name next to the running executable
/// (reefd and the demo binaries ship together), then on PATH.
pub fn resolve(command: &str, working_dir: Option<&Path>) -> Result<PathBuf, SpawnError> {
    if command.contains('/') {
        let path = match working_dir {
            Some(dir) if Path::new(command).is_relative() => dir.join(command),
            _ => PathBuf::from(command),
        };
        return match path.is_file() {
            true => Ok(path),
            false => Err(SpawnError::NotFound(command.to_owned())),
        };
    }
    let beside_us = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(command)));
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(command));
    beside_us
        .into_iter()
        .chain(on_path)
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| SpawnError::NotFound(command.to_owned()))
}

/// PATH of a container that does not inherit the node's environment (systemd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment a spawned container finds (REEF_*).
#[derive(Debug, Clone)]
pub struct Environment {
    /// REEF_NODE.
    pub node: String,
    /// REEF_CA.
    pub ca: PathBuf,
    /// REEF_INSECURE.
    pub insecure: bool,
    /// REEF_OTLP_ENDPOINT and REEF_OTLP_CA, when the node exports traces.
    pub trace_export: reef_telemetry::Export,
    /// How containers are confined; `None`: not at all (`--unconfined-containers`, and
    /// nodes run inside a test binary, which cannot be the launcher).
    pub sandbox: Option<Sandbox>,
}

/// How the node confines its process containers (see [`reef_sandbox`]).
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The launcher: the node's own executable.
    pub launcher: PathBuf,
    /// What every container is kept out of: the node's data, its policy file.
    pub hidden: Vec<PathBuf>,
    /// Who containers run as; `None`: the node's user.
    pub run_as: Option<reef_sandbox::RunAs>,
}

/// A process the node spawned; `wait` reports its end and reaps it.
pub struct Spawned {
    /// Who it is.
    pub id: ProcessId,
    /// Resolves when it ends.
    pub wait: tokio::process::Child,
}

/// Spawns `spec` as container `alias` in a new process group, stdout and stderr
/// appended to `log` (a file, so the process outlives a killed node).
pub fn spawn(
    spec: &ProcessSpec,
    alias: &str,
    parent: Option<&str>,
    token: &str,
    credentials: Option<&(PathBuf, PathBuf)>,
    environment: &Environment,
    log: &Path,
) -> Result<Spawned, SpawnError> {
    let program = resolve(&spec.command, spec.working_dir.as_deref())?;
    let open_log = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| SpawnError::Log {
                path: log.to_owned(),
                source,
            })
    };
    let stdout = open_log()?;
    let stderr = stdout.try_clone().map_err(|source| SpawnError::Log {
        path: log.to_owned(),
        source,
    })?;
    let mut command = match &environment.sandbox {
        None => Command::new(&program),
        Some(sandbox) => confined(sandbox, &program, credentials, environment)?,
    };
    command.args(&spec.args);
    // A container finds only what its definition gives it, not the node's own
    // environment (cloud credentials, tokens), unless the definition asks to inherit.
    if !spec.inherit_env {
        command.env_clear().env("PATH", DEFAULT_PATH);
    }
    command
        .envs(&spec.env)
        .env("REEF_ALIAS", alias)
        .env("REEF_PARENT", parent.unwrap_or(""))
        .env("REEF_NODE", &environment.node)
        .env("REEF_CA", &environment.ca)
        .env(
            "REEF_INSECURE",
            if environment.insecure { "1" } else { "0" },
        )
        .env("REEF_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own group: a signal to the node's terminal does not reach it, and
        // stopping it reaches everything it started.
        .process_group(0);
    if let Some((cert, key)) = credentials {
        command.env("REEF_CERT", cert).env("REEF_KEY", key);
    }
    if let Some(endpoint) = &environment.trace_export.endpoint {
        command.env(reef_telemetry::OTLP_ENDPOINT_ENV, endpoint);
    }
    if let Some(ca) = &environment.trace_export.ca {
        command.env(reef_telemetry::OTLP_CA_ENV, ca);
    }
    if let Some(dir) = &spec.working_dir {
        command.current_dir(dir);
    }
    let child = command.spawn().map_err(|source| SpawnError::Os {
        program: OsString::from(&program).to_string_lossy().into_owned(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    // Read at once: the process exists (or is a zombie we have not reaped yet).
    let start_time = ProcessId::of(pid).map_or(0, |id| id.start_time);
    Ok(Spawned {
        id: ProcessId { pid, start_time },
        wait: child,
    })
}

/// The launcher that confines `program` (its arguments still to add): it hides the
/// node's data but for what the container needs to call the node, which becomes the
/// container user's own to read.
fn confined(
    sandbox: &Sandbox,
    program: &Path,
    credentials: Option<&(PathBuf, PathBuf)>,
    environment: &Environment,
) -> Result<Command, SpawnError> {
    let mut readable = vec![environment.ca.clone()];
    readable.extend(environment.trace_export.ca.clone());
    if let Some((cert, key)) = credentials {
        for file in [cert, key] {
            if let Some(user) = sandbox.run_as {
                std::os::unix::fs::chown(file, Some(user.uid), Some(user.gid)).map_err(
                    |source| SpawnError::Credentials {
                        path: file.clone(),
                        source,
                    },
                )?;
            }
            readable.push(file.clone());
        }
    }
    let confinement = reef_sandbox::Confinement {
        hidden: sandbox.hidden.clone(),
        readable,
        run_as: sandbox.run_as,
    };
    let mut command = Command::new(&sandbox.launcher);
    command.args(confinement.launcher_args(program));
    Ok(command)
}

/// Waits for a spawned process to end and reaps it.
pub async fn wait_spawned(mut child: tokio::process::Child) -> Exit {
    match child.wait().await {
        Ok(status) => Exit::from_status(status),
        Err(error) => {
            tracing::warn!(%error, "waiting for a container process failed");
            Exit::Unknown
        }
    }
}

/// Waits for a process that is not our child (adopted after a node restart) to end,
/// with a pidfd: no polling, and no confusion with a later process of the same pid.
pub async fn wait_adopted(id: ProcessId) -> Exit {
    let Some(pid) = rustix::process::Pid::from_raw(id.pid as i32) else {
        return Exit::Unknown;
    };
    let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(_) => return Exit::Unknown,
    };
    // The pid could have been reused between reading the identity and opening the fd.
    if !id.is_alive() {
        return Exit::Unknown;
    }
    // `AsyncFd::new` is deprecated because a borrowed fd could be closed while
    // registered; this one is an `OwnedFd` that the AsyncFd owns, and the crate forbids
    // the `unsafe` of `AsyncFd::register`.
    #[allow(deprecated)]
    let registered = AsyncFd::new(pidfd);
    match registered {
        Ok(fd) => {
            let _ = fd.readable().await;
        }
        Err(error) => {
            tracing::warn!(%error, pid = id.pid, "cannot watch an adopted process");
            std::future::pending::<()>().await;
        }
    }
    Exit::Unknown
}

/// Sends `signal` to the process group led by `pid`; a group that is gone is fine.
pub fn signal_group(pid: u32, signal: Signal) {
    if pid == 0 {
        return;
    }
    match nix::sys::signal::killpg(Pid::from_raw(pid as i32), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(error) => tracing::warn!(pid, %signal, %error, "cannot signal a process group"),
    }
}
