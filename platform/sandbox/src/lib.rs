//! The sandbox a process container starts in: what keeps it out of the node's secrets.
//!
//! The node does not confine the container between `fork` and `exec` itself (its runtime
//! is multi-threaded, and the workspace has no `unsafe`). It starts its own executable
//! as a launcher instead ([`LAUNCHER_ARG`] first, then the [`Confinement`] as arguments),
//! and the launcher, a fresh single-threaded process with the container's pid, process
//! group, environment and log, confines itself and `exec`s the container's program:
//!
//! - as root it switches to another user first ([`RunAs`]), or else drops every
//!   capability;
//! - then Landlock hides paths ([`Confinement::hidden`]: the node's data directory, its
//!   policy file) and leaves the rest of the file system as it was, but for the few files
//!   under them that the container needs ([`Confinement::readable`]: its own certificate
//!   and key, the CA). Landlock only grants, so "all but these" is written as grants on
//!   every entry beside each hidden path and beside each of its ancestors;
//! - and, where the kernel can (Landlock ABI 6), the container may not signal processes
//!   outside its sandbox (the node, other containers) nor reach their abstract sockets.
//!
//! The rules hold for the container and everything it starts, and cannot be lifted.

use std::{
    ffi::{OsStr, OsString},
    os::{fd::OwnedFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible as _, PathBeneath, PathFd, Ruleset,
    RulesetAttr as _, RulesetCreated, RulesetCreatedAttr as _, RulesetStatus, Scope,
};
use nix::{
    fcntl::OFlag,
    sys::stat::{Mode, SFlag},
    unistd::{Gid, Uid},
};

/// The first argument that makes reef's executables (reefd, reef) act as the launcher.
pub const LAUNCHER_ARG: &str = "__reef-sandbox";

/// The newest Landlock ABI whose rights this sandbox was written and tested for; an
/// older kernel enforces what it knows (best effort), a newer one no more than this.
const TESTED_ABI: ABI = ABI::V6;

/// A user a container runs as, instead of the node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// The user id.
    pub uid: u32,
    /// Its primary group, also its only group.
    pub gid: u32,
}

impl RunAs {
    /// A user by name or numeric id (then with the group of the same number, unless the
    /// user database knows it).
    pub fn lookup(user: &str) -> Result<Self, SandboxError> {
        let unknown = || SandboxError::UnknownUser(user.to_owned());
        let found = match user.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(Uid::from_raw(uid))
                .map_err(|_| unknown())?
                .map_or(Self { uid, gid: uid }, |user| Self::of(&user)),
            Err(_) => Self::of(
                &nix::unistd::User::from_name(user)
                    .map_err(|_| unknown())?
                    .ok_or_else(unknown)?,
            ),
        };
        Ok(found)
    }

    fn of(user: &nix::unistd::User) -> Self {
        Self {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }
}

/// What a container may not touch, and who it runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    /// Directories and files hidden from it: no right at all, below them included.
    pub hidden: Vec<PathBuf>,
    /// Files under `hidden` that it may read nonetheless.
    pub readable: Vec<PathBuf>,
    /// The user to switch to (only a root launcher can).
    pub run_as: Option<RunAs>,
}

/// Why a container could not be confined; the launcher then runs nothing.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The launcher's arguments are not what [`Confinement::launcher_args`] writes.
    #[error("bad launcher arguments: {0}")]
    Arguments(String),
    /// No such user.
    #[error("no user {0:?} on this machine")]
    UnknownUser(String),
    /// A path to hide or to keep readable could not be examined.
    #[error("cannot examine {path}: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Switching to the container's user failed.
    #[error("cannot switch to uid {uid}: {source}")]
    User {
        /// The user.
        uid: u32,
        /// The cause.
        source: nix::Error,
    },
    /// A root container's capabilities could not be dropped.
    #[error("cannot drop root's capabilities: {0}")]
    Capabilities(std::io::Error),
    /// Landlock refused the rules or is not there.
    #[error("Landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    /// The kernel enforces no Landlock rule (not built in, not enabled at boot, or
    /// blocked by a seccomp filter).
    #[error(
        "this kernel does not enforce Landlock, so a container could read the node's keys; \
         start reefd with --unconfined-containers to run containers anyway"
    )]
    NotEnforced,
}

impl Confinement {
    /// The launcher's arguments (after the executable) that confine `program`; the
    /// program's own arguments follow them.
    pub fn launcher_args(&self, program: &Path) -> Vec<OsString> {
        let mut args = vec![OsString::from(LAUNCHER_ARG)];
        for (flag, paths) in [("--hide", &self.hidden), ("--read", &self.readable)] {
            for path in paths {
                args.push(flag.into());
                args.push(path.into());
            }
        }
        if let Some(run_as) = self.run_as {
            args.extend(["--uid".into(), run_as.uid.to_string().into()]);
            args.extend(["--gid".into(), run_as.gid.to_string().into()]);
        }
        args.push("--".into());
        args.push(program.into());
        args
    }

    /// Reads what [`Self::launcher_args`] wrote (without [`LAUNCHER_ARG`]): the
    /// confinement, the program and its arguments.
    pub fn from_launcher_args(
        args: impl IntoIterator<Item = OsString>,
    ) -> Result<(Self, OsString, Vec<OsString>), SandboxError> {
        let mut args = args.into_iter();
        let mut confinement = Self::default();
        let (mut uid, mut gid) = (None, None);
        loop {
            let flag = args
                .next()
                .ok_or_else(|| SandboxError::Arguments("no '--' before the program".into()))?;
            if flag == "--" {
                break;
            }
            let value = args.next().ok_or_else(|| {
                SandboxError::Arguments(format!("{} needs a value", flag.to_string_lossy()))
            })?;
            let number = |value: &OsStr| {
                value
                    .to_str()
                    .and_then(|v| v.parse::<u32>().ok())
                    .ok_or_else(|| SandboxError::Arguments(format!("{value:?} is not a number")))
            };
            match flag.to_str() {
                Some("--hide") => confinement.hidden.push(value.into()),
                Some("--read") => confinement.readable.push(value.into()),
                Some("--uid") => uid = Some(number(&value)?),
                Some("--gid") => gid = Some(number(&value)?),
                _ => return Err(SandboxError::Arguments(format!("unknown flag {flag:?}"))),
            }
        }
        confinement.run_as = match (uid, gid) {
            (Some(uid), Some(gid)) => Some(RunAs { uid, gid }),
            (None, None) => None,
            _ => {
                return Err(SandboxError::Arguments(
                    "--uid and --gid go together".into(),
                ));
            }
        };
        let program = args
            .next()
            .ok_or_else(|| SandboxError::Arguments("no program after '--'".into()))?;
        Ok((confinement, program, args.collect()))
    }

    /// Confines the calling process, for good: the rules are built while it still has
    /// the node's rights, then it switches user and enforces them.
    pub fn enter(&self) -> Result<(), SandboxError> {
        let rules = self.rules()?;
        if let Some(run_as) = self.run_as {
            switch_user(run_as)?;
        }
        // Root with its capabilities would not need the files: it could read the disk
        // under them, load a module, change its user.
        if effective_uid() == 0 {
            drop_capabilities()?;
        }
        // restrict_self also sets no_new_privs: nothing exec'd later gains rights.
        let status = rules.restrict_self()?;
        if status.ruleset == RulesetStatus::NotEnforced {
            return Err(SandboxError::NotEnforced);
        }
        Ok(())
    }

    fn rules(&self) -> Result<RulesetCreated, SandboxError> {
        let hidden = outermost(self.hidden.iter().map(|path| canonical(path)).collect());
        let mut ancestors: Vec<PathBuf> = hidden
            .iter()
            .flat_map(|path| path.ancestors().skip(1).map(Path::to_path_buf))
            .collect();
        ancestors.sort();
        ancestors.dedup();
        let untouched = |path: &Path| {
            !hidden.iter().any(|hidden| path.starts_with(hidden))
                && ancestors
                    .binary_search_by(|a| a.as_path().cmp(path))
                    .is_err()
        };
        let mut rules = Ruleset::default()
            .handle_access(AccessFs::from_all(TESTED_ABI))?
            .scope(Scope::from_all(TESTED_ABI))?
            .create()?
            // Listing any directory, a hidden one too: names are not what is kept.
            .add_rule(PathBeneath::new(
                path_fd(Path::new("/"))?,
                AccessFs::ReadDir,
            ))?;
        for ancestor in &ancestors {
            let entries = match std::fs::read_dir(ancestor) {
                Ok(entries) => entries,
                // Above a hidden path that does not exist yet: nothing there to grant.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(SandboxError::Path {
                        path: ancestor.clone(),
                        source,
                    });
                }
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if !untouched(&path) {
                    continue;
                }
                // A symbolic link is not followed: it could point into a hidden
                // directory, and its target is reachable by its own path if allowed.
                let Some((fd, kind)) = open_no_follow(&path) else {
                    continue;
                };
                let access = match kind {
                    SFlag::S_IFDIR => AccessFs::from_all(TESTED_ABI),
                    SFlag::S_IFLNK => continue,
                    _ => AccessFs::from_file(TESTED_ABI),
                };
                rules = rules.add_rule(PathBeneath::new(fd, access))?;
            }
        }
        // One that does not exist (no CA on an --insecure node) needs no rule.
        for file in self.readable.iter().filter(|file| file.exists()) {
            rules = rules.add_rule(PathBeneath::new(path_fd(file)?, AccessFs::ReadFile))?;
        }
        Ok(rules)
    }
}

/// The user this process runs as (0: root, which alone can run containers as another).
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether this kernel enforces Landlock (as [`Confinement::enter`] needs).
pub fn landlock_available() -> bool {
    kernel_enforces(ABI::V1)
}

/// Whether this kernel also keeps a confined container from signalling processes
/// outside its sandbox (Landlock ABI 6, Linux 6.12); older ones enforce the rest.
pub fn signal_scoping_available() -> bool {
    kernel_enforces(ABI::V6)
}

/// Whether a ruleset with everything of `abi` can be made here (it is not enforced).
fn kernel_enforces(abi: ABI) -> bool {
    Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .and_then(|ruleset| match abi >= ABI::V6 {
            true => ruleset.scope(Scope::from_all(abi)),
            false => Ok(ruleset),
        })
        .and_then(|ruleset| ruleset.create())
        .is_ok()
}

/// In reef's executables, first thing in `main`: when started as the launcher, confines
/// itself and becomes the container's program, and never returns. A failure is told on
/// stderr (the container's log) and ends the process with 126, as a shell does for a
/// program it cannot run.
pub fn run_if_launcher() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(LAUNCHER_ARG)) {
        return;
    }
    let error = match Confinement::from_launcher_args(args) {
        Ok((confinement, program, program_args)) => match confinement.enter() {
            Ok(()) => {
                let error = Command::new(&program).args(program_args).exec();
                format!("cannot start {}: {error}", program.to_string_lossy())
            }
            Err(error) => error.to_string(),
        },
        Err(error) => error.to_string(),
    };
    eprintln!("reef sandbox: {error}");
    std::process::exit(126);
}

/// `paths` without those inside another: a hidden directory's own entries get no grant,
/// as they would if it were taken for the ancestor of a hidden path below it.
fn outermost(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    paths.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for path in paths {
        // Sorted, so a path's ancestors come before it.
        if !kept.iter().any(|outer| path.starts_with(outer)) {
            kept.push(path);
        }
    }
    kept
}

/// `path`, absolute, with the links of the deepest part that exists resolved: a path that
/// does not exist yet is hidden where it will appear.
fn canonical(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    for existing in absolute.ancestors() {
        if let Ok(resolved) = std::fs::canonicalize(existing) {
            return match absolute.strip_prefix(existing) {
                Ok(rest) if !rest.as_os_str().is_empty() => resolved.join(rest),
                _ => resolved,
            };
        }
    }
    absolute
}

fn path_fd(path: &Path) -> Result<PathFd, SandboxError> {
    PathFd::new(path).map_err(|error| SandboxError::Path {
        path: path.to_owned(),
        source: std::io::Error::other(error),
    })
}

/// An `O_PATH` descriptor of `path` itself (a link is not followed) and its kind; `None`
/// if it went away meanwhile.
fn open_no_follow(path: &Path) -> Option<(OwnedFd, SFlag)> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let stat = nix::sys::stat::fstat(&fd).ok()?;
    let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
    Some((fd, kind))
}

/// Leaves root its uid and no capability, now or after `exec`: the bounding set goes
/// first, since root's programs start with all of it.
fn drop_capabilities() -> Result<(), SandboxError> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    for capability in CapabilitySet::all().iter() {
        match rustix::thread::remove_capability_from_bounding_set(capability) {
            // One this kernel does not know.
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(error) => return Err(SandboxError::Capabilities(error.into())),
        }
    }
    rustix::thread::clear_ambient_capability_set()
        .map_err(|error| SandboxError::Capabilities(error.into()))?;
    let none = CapabilitySets {
        effective: CapabilitySet::empty(),
        permitted: CapabilitySet::empty(),
        inheritable: CapabilitySet::empty(),
    };
    rustix::thread::set_capabilities(None, none)
        .map_err(|error| SandboxError::Capabilities(error.into()))
}

fn switch_user(run_as: RunAs) -> Result<(), SandboxError> {
    let failed = |source| SandboxError::User {
        uid: run_as.uid,
        source,
    };
    let gid = Gid::from_raw(run_as.gid);
    // Groups first, then the group, then the user: after setuid none can change.
    nix::unistd::setgroups(&[gid]).map_err(failed)?;
    nix::unistd::setgid(gid).map_err(failed)?;
    nix::unistd::setuid(Uid::from_raw(run_as.uid)).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_arguments_read_back_as_written() {
        let confinement = Confinement {
            hidden: vec!["/var/lib/reef".into(), "/etc/reef/policy.toml".into()],
            readable: vec!["/var/lib/reef/tls/ca.pem".into()],
            run_as: Some(RunAs {
                uid: 65534,
                gid: 65534,
            }),
        };
        let mut args = confinement.launcher_args(Path::new("/bin/sh"));
        assert_eq!(args.remove(0), LAUNCHER_ARG);
        args.extend(["-c".into(), "--hide".into()]);
        let (read, program, program_args) = Confinement::from_launcher_args(args).unwrap();
        assert_eq!(read, confinement);
        assert_eq!(program, "/bin/sh");
        assert_eq!(
            program_args,
            ["-c", "--hide"],
            "the program's own flags are its own"
        );
    }

    #[test]
    fn bad_launcher_arguments_are_refused_by_name() {
        let refused = |args: &[&str]| {
            Confinement::from_launcher_args(args.iter().map(OsString::from))
                .unwrap_err()
                .to_string()
        };
        assert!(refused(&["--hide"]).contains("--hide needs a value"));
        assert!(refused(&["--uid", "x", "--", "p"]).contains("not a number"));
        assert!(refused(&["--uid", "1", "--", "p"]).contains("go together"));
        assert!(refused(&["--frob", "1", "--", "p"]).contains("unknown flag"));
        assert!(refused(&["--"]).contains("no program"));
        assert!(refused(&[]).contains("no '--'"));
    }

    #[test]
    fn a_path_that_does_not_exist_yet_is_hidden_where_it_will_appear() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let resolved = std::fs::canonicalize(&real).unwrap();
        assert_eq!(
            canonical(&dir.path().join("link/not-yet/x")),
            resolved.join("not-yet/x")
        );
        assert_eq!(canonical(&dir.path().join("link")), resolved);
    }

    #[test]
    fn a_hidden_path_inside_another_leaves_the_outer_one_whole() {
        let paths = [
            "/data/policy.toml",
            "/data",
            "/etc/reef/key.pem",
            "/data/files",
            "/data",
        ];
        let kept = outermost(paths.iter().map(PathBuf::from).collect());
        assert_eq!(
            kept,
            [PathBuf::from("/data"), PathBuf::from("/etc/reef/key.pem")]
        );
    }

    #[test]
    fn users_are_found_by_name_and_number() {
        assert_eq!(RunAs::lookup("0").unwrap(), RunAs { uid: 0, gid: 0 });
        assert_eq!(RunAs::lookup("root").unwrap(), RunAs { uid: 0, gid: 0 });
        assert!(
            RunAs::lookup("no-such-user-here")
                .unwrap_err()
                .to_string()
                .contains("no user \"no-such-user-here\"")
        );
    }
}
