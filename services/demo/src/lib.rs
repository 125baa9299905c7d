//! The demo project's containers, one behaviour per subcommand (`reef-demo BEHAVIOUR`,
//! or `reef demo BEHAVIOUR`):
//!
//! - `echo`: a request's reply is its payload;
//! - `counter`: counts the messages it receives; a request returns the count;
//! - `ticker`: sends `tick` to a target (default `counter`) every interval;
//! - `crasher`: answers like `echo`, then exits with a given code after a delay (for
//!   trying restart policies);
//! - `pool`: a task host running `--tasks N` worker tasks `ALIAS/worker-I` (and more
//!   when the node asks for behaviour `worker`). A worker counts messages; a request
//!   answers with the count, or panics when its payload is `panic`;
//! - `ledger`: appends each acknowledged-mode message to `--file` as `SEQUENCE PAYLOAD`,
//!   skipping redeliveries it recorded before it was killed (by sequence); a request
//!   returns how many it recorded.
//! - `replica`: keeps a `reef_sdk::state::Replica` of `--namespace`; a request returns
//!   its view, `revision=R changes=N` and then `KEY=VALUE` lines in key order.
//! - `chat`: the chat room behind `reef-gateway`: serves the chat page and broadcasts
//!   what each WebSocket connection says to its room (see `chat.rs`).
//!
//! The node tells each process its alias and where the node is through `REEF_*`
//! variables; see `reef_sdk::ContainerOptions::from_env`.

mod chat;

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use reef_sdk::{
    Command, ConnectOptions, ContainerOptions, Context, Handler, HandlerError, Message,
    TaskOptions,
    state::{Replica, StateClient},
};

#[derive(Debug, Parser)]
#[command(about = "reef demo containers")]
struct Args {
    #[command(subcommand)]
    behaviour: Behaviour,
}

#[derive(Debug, Subcommand)]
enum Behaviour {
    /// Replies to every request with its payload.
    Echo,
    /// Counts messages; a request returns the count.
    Counter,
    /// Sends `tick` to a target at a fixed interval.
    Ticker {
        /// Alias that receives the ticks.
        #[arg(long, default_value = "counter")]
        target: String,
        /// Milliseconds between ticks.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Answers like echo, then exits with --code after --after-ms.
    Crasher {
        /// Milliseconds after attaching before it exits.
        #[arg(long, default_value_t = 100)]
        after_ms: u64,
        /// Its exit code.
        #[arg(long, default_value_t = 3)]
        code: u8,
    },
    /// Hosts worker task containers.
    Pool {
        /// Workers started at once, `ALIAS/worker-0`…
        #[arg(long, default_value_t = 4)]
        tasks: usize,
    },
    /// Records acknowledged-mode messages in a file, once each.
    Ledger {
        /// The file it appends to (and reads back after a restart).
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Keeps a local replica of a state namespace and answers requests with it.
    Replica {
        /// The namespace it replicates.
        #[arg(long)]
        namespace: String,
    },
    /// The chat room behind reef-gateway: serves the page, broadcasts what is said.
    Chat {
        /// The gateway room it broadcasts to.
        #[arg(long, default_value = "lobby")]
        room: String,
        /// Lines of history kept in the node's state.
        #[arg(long, default_value_t = 50)]
        keep: usize,
    },
}

/// A replica of a namespace: the snapshot taken at start, then every change.
struct ReplicaView {
    replica: Replica,
    changes: Arc<AtomicU64>,
}

impl ReplicaView {
    async fn start(namespace: &str) -> Result<Self, reef_sdk::Error> {
        let state = StateClient::connect(&ConnectOptions::from_env()).await?;
        let changes = Arc::new(AtomicU64::new(0));
        let counted = changes.clone();
        let replica = Replica::start(state, namespace, "", move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .await?;
        Ok(Self { replica, changes })
    }
}

impl Handler for ReplicaView {
    async fn on_request(&mut self, _: &Context, _: Message) -> Result<Bytes, HandlerError> {
        let mut view = format!(
            "revision={} changes={}\n",
            self.replica.revision(),
            self.changes.load(Ordering::Relaxed)
        );
        for (key, entry) in self.replica.snapshot() {
            view.push_str(&format!(
                "{key}={}\n",
                String::from_utf8_lossy(&entry.value)
            ));
        }
        Ok(view.into())
    }
}

/// Appends each message to a file with its sequence number. The file is its memory
/// across restarts: a redelivered message it already recorded (its sequence is not past
/// the last line's) is skipped, so each one is recorded exactly once.
struct Ledger {
    file: std::fs::File,
    last: u64,
    recorded: u64,
}

impl Ledger {
    fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path).or_else(|error| match error.kind() {
            std::io::ErrorKind::NotFound => Ok(String::new()),
            _ => Err(error),
        })?;
        // A torn last line (killed mid-write) would not parse: such a line is not there.
        let complete = match text.rfind('\n') {
            Some(end) => &text[..=end],
            None => "",
        };
        if complete.len() != text.len() {
            std::fs::write(path, complete)?;
        }
        let last = complete
            .lines()
            .last()
            .and_then(|line| line.split(' ').next()?.parse().ok())
            .unwrap_or(0);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file,
            last,
            recorded: complete.lines().count() as u64,
        })
    }
}

impl Handler for Ledger {
    async fn on_message(&mut self, _: &Context, message: Message) {
        use std::io::Write as _;
        if message.sequence != 0 && message.sequence <= self.last {
            return;
        }
        let mut line = format!("{} ", message.sequence).into_bytes();
        line.extend_from_slice(&message.payload);
        line.push(b'\n');
        if let Err(error) = self.file.write_all(&line) {
            // Unrecorded and unacknowledged would need a crash to be redelivered: exit.
            eprintln!("reef-demo ledger: cannot record: {error}");
            std::process::exit(1);
        }
        self.last = self.last.max(message.sequence);
        self.recorded += 1;
    }

    async fn on_request(&mut self, _: &Context, _: Message) -> Result<Bytes, HandlerError> {
        Ok(self.recorded.to_string().into())
    }
}

/// A task host: its own handler does nothing; its workers do the work.
struct Pool {
    tasks: usize,
}

impl Handler for Pool {
    async fn on_start(&mut self, ctx: &Context) -> Result<(), HandlerError> {
        ctx.tasks().define("worker", |_| Worker::default());
        let options = (0..self.tasks)
            .map(|n| TaskOptions::new(&format!("{}/worker-{n}", ctx.alias())).named("worker"));
        for result in ctx.tasks().spawn_all(options, Worker::default).await {
            result?;
        }
        Ok(())
    }
}

/// Counts messages; a request answers with the count, or panics on `panic`.
#[derive(Default)]
struct Worker {
    count: u64,
}

impl Handler for Worker {
    async fn on_message(&mut self, _: &Context, _: Message) {
        self.count += 1;
    }

    async fn on_request(&mut self, ctx: &Context, request: Message) -> Result<Bytes, HandlerError> {
        if request.payload == "panic" {
            panic!("{} was asked to panic", ctx.alias());
        }
        Ok(self.count.to_string().into())
    }
}

struct Crasher {
    after: Duration,
    code: u8,
}

impl Handler for Crasher {
    async fn on_start(&mut self, _: &Context) -> Result<(), HandlerError> {
        let (after, code) = (self.after, self.code);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!("reef-demo crasher: exiting with code {code} as told");
            std::process::exit(code.into());
        });
        Ok(())
    }

    async fn on_request(&mut self, _: &Context, request: Message) -> Result<Bytes, HandlerError> {
        Ok(request.payload)
    }
}

struct Echo;

impl Handler for Echo {
    async fn on_request(&mut self, _: &Context, request: Message) -> Result<Bytes, HandlerError> {
        Ok(request.payload)
    }
}

#[derive(Default)]
struct Counter {
    count: u64,
}

impl Handler for Counter {
    async fn on_message(&mut self, _: &Context, _: Message) {
        self.count += 1;
    }

    async fn on_request(&mut self, _: &Context, _: Message) -> Result<Bytes, HandlerError> {
        Ok(self.count.to_string().into())
    }

    async fn on_command(&mut self, _: &Context, command: Command) -> Result<Bytes, HandlerError> {
        match command.name.as_str() {
            "reset" => {
                self.count = 0;
                Ok("0".into())
            }
            other => Err(HandlerError::unimplemented(&format!(
                "the command {other:?}"
            ))),
        }
    }
}

struct Ticker {
    target: String,
    interval: Duration,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Handler for Ticker {
    async fn on_start(&mut self, ctx: &Context) -> Result<(), HandlerError> {
        let client = ctx.client().clone();
        let (target, interval) = (self.target.clone(), self.interval);
        self.task = Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            loop {
                ticks.tick().await;
                if let Err(error) = client.send(&target, "tick").await {
                    tracing::warn!(%error, "tick not sent");
                    return;
                }
            }
        }));
        Ok(())
    }

    async fn on_stop(&mut self, _: &Context) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Runs the program with command-line `args` (the first is the program's name, as in
/// `std::env::args_os`).
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = Args::parse_from(args);
    reef_telemetry::runtime::run_main("reef-demo", None, run(args))
}

async fn run(args: Args) -> ExitCode {
    use reef_telemetry as telemetry;
    let service = telemetry::Service::container("reef-demo");
    let _telemetry = match telemetry::init(&service, "info", &telemetry::Export::from_env()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("reef-demo: {error}");
            return ExitCode::from(2);
        }
    };
    let result = match args.behaviour {
        Behaviour::Echo => reef_sdk::run(ContainerOptions::from_env("echo"), Echo).await,
        Behaviour::Counter => {
            reef_sdk::run(ContainerOptions::from_env("counter"), Counter::default()).await
        }
        Behaviour::Ticker {
            target,
            interval_ms,
        } => {
            let ticker = Ticker {
                target,
                interval: Duration::from_millis(interval_ms.max(1)),
                task: None,
            };
            reef_sdk::run(ContainerOptions::from_env("ticker"), ticker).await
        }
        Behaviour::Crasher { after_ms, code } => {
            let crasher = Crasher {
                after: Duration::from_millis(after_ms),
                code,
            };
            reef_sdk::run(ContainerOptions::from_env("crasher"), crasher).await
        }
        Behaviour::Pool { tasks } => {
            reef_sdk::run(ContainerOptions::from_env("pool"), Pool { tasks }).await
        }
        Behaviour::Ledger { file } => match Ledger::open(&file) {
            Ok(ledger) => reef_sdk::run(ContainerOptions::from_env("ledger"), ledger).await,
            Err(error) => Err(reef_sdk::Error::Config(format!(
                "cannot open the ledger {}: {error}",
                file.display()
            ))),
        },
        Behaviour::Replica { namespace } => match ReplicaView::start(&namespace).await {
            Ok(view) => reef_sdk::run(ContainerOptions::from_env("replica"), view).await,
            Err(error) => Err(error),
        },
        Behaviour::Chat { room, keep } => match chat::Chat::start(room, keep.max(1)).await {
            Ok(chat) => reef_sdk::run(ContainerOptions::from_env("chat"), chat).await,
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reef-demo: {error}");
            ExitCode::FAILURE
        }
    }
}
