//! The CLI's commands, one per file.

use std::process::ExitCode;

use clap::Subcommand;
use reef_sdk::ConnectOptions;

mod ca;
mod config;
mod container;
mod files;
mod lifecycle;
mod logs;
mod messaging;
mod ping;
mod policy;
mod ps;
mod request;
mod send;
mod state;
mod top;
mod up;
mod watch;

/// What `reef` can do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node with a project's containers, supervised by it (default: the demo).
    Up(up::Args),
    /// The node's containers as a tree: state, kind, pid, restarts, uptime.
    Ps,
    /// A live view of the node and its tree: rates, queue depths, restarts, latency.
    Top(top::Args),
    /// Create and start a supervised process container (`reef create ALIAS -- PROGRAM
    /// ARGS…`) or a task container in a host (`reef create ALIAS --task-host HOST --name
    /// BEHAVIOUR`).
    Create(Box<lifecycle::CreateArgs>),
    /// Destroy a container and its subtree.
    Destroy(lifecycle::StopArgs),
    /// Start a stopped or failed container.
    Start(lifecycle::AliasArgs),
    /// Stop a container and its subtree (they stay stopped until started).
    Stop(lifecycle::StopArgs),
    /// Stop and start a container and its subtree.
    Restart(lifecycle::AliasArgs),
    /// Print lifecycle and registry events as they happen.
    Watch(watch::Args),
    /// Print a container's stdout and stderr.
    Logs(logs::Args),
    /// Send a fire-and-forget message.
    Send(send::Args),
    /// Send a request and print the reply.
    Request(request::Args),
    /// Check the node (no alias) or a container's own endpoint (with an alias).
    Ping(ping::Args),
    /// What a container reports about itself (its pid, uptime, what it handled), asked
    /// through the node.
    Status(container::StatusArgs),
    /// Run an operator command the container defines (`reef command counter reset`),
    /// through the node.
    #[command(name = "command")]
    Operator(container::CommandArgs),
    /// Groups addressed as `group:NAME`: list, set a strategy, join, leave.
    #[command(subcommand)]
    Group(messaging::GroupCommand),
    /// Router rules: list, add, delete.
    #[command(subcommand)]
    Rule(messaging::RuleCommand),
    /// Firewall mode: refuse what no rule allows (on) or not (off).
    Firewall(messaging::FirewallArgs),
    /// What happens to sends for a container whose mailbox is full.
    Overflow(messaging::OverflowArgs),
    /// The envelopes the node could not or would not deliver, and why.
    Deadletters(messaging::DeadLettersArgs),
    /// Synchronised state: get, put, del, ls, watch.
    #[command(subcommand)]
    State(state::StateCommand),
    /// The node's file store: ls, stat, get, put, rm, cp, mv.
    #[command(subcommand)]
    Files(files::FilesCommand),
    /// A cluster CA for a tree of nodes: init, issue (files only; no node is called).
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// The built-in policy (`reef policy default`).
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Project files: check (no node is called).
    #[command(subcommand)]
    Config(config::ConfigCommand),
}

/// Runs `command` against the node described by `options`.
pub async fn run(command: Command, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up(args) => up::run(args, options.insecure).await,
        Command::Ca(command) => ca::run(command),
        Command::Policy(command) => policy::run(command),
        Command::Config(command) => config::run(command),
        Command::Ps => ps::run(options).await,
        Command::Top(args) => top::run(args, options).await,
        Command::Create(args) => lifecycle::create(*args, options).await,
        Command::Destroy(args) => lifecycle::destroy(args, options).await,
        Command::Start(args) => lifecycle::start(args, options).await,
        Command::Stop(args) => lifecycle::stop(args, options).await,
        Command::Restart(args) => lifecycle::restart(args, options).await,
        Command::Watch(args) => watch::run(args, options).await,
        Command::Logs(args) => logs::run(args, options).await,
        Command::Send(args) => send::run(args, options).await,
        Command::Request(args) => request::run(args, options).await,
        Command::Ping(args) => ping::run(args, options).await,
        Command::Status(args) => container::status(args, options).await,
        Command::Operator(args) => container::command(args, options).await,
        Command::Group(command) => messaging::group(command, options).await,
        Command::Rule(command) => messaging::rule(command, options).await,
        Command::Firewall(args) => messaging::firewall(args, options).await,
        Command::Overflow(args) => messaging::overflow(args, options).await,
        Command::Deadletters(args) => messaging::dead_letters(args, options).await,
        Command::State(command) => state::run(command, options).await,
        Command::Files(command) => files::run(command, options).await,
    }
}
