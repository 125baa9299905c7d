//! Write reef containers and clients in Rust.
//!
//! A **container** is a [`Handler`] run with [`run`]: the SDK registers its alias with the
//! node, opens the attach stream, serves `reef.v1.Container` on a TLS endpoint with a
//! certificate the node issues, and calls the handler one message at a time.
//! A **client** is a [`Client`]: send messages and make requests through a node.
//!
//! A complete, running example: a node in this process, an echo container, a client.
//!
//! ```
//! use std::time::Duration;
//! use reef_sdk::{Bytes, Client, Code, ConnectOptions, ContainerOptions, Context, Handler, HandlerError, Message};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     async fn on_request(&mut self, _: &Context, request: Message) -> Result<Bytes, HandlerError> {
//!         Ok(request.payload)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let data = tempfile::tempdir()?;
//! # let config = reef_node::NodeConfig::new("127.0.0.1:0".parse()?, data.path());
//! # let ca = config.ca_path();
//! # let started = reef_node::Node::bind(config).await?;
//! # let address = started.local_addr().to_string();
//! # tokio::spawn(started.run(std::future::pending()));
//! // A node listens at `address`; its CA certificate is the file `ca`. Every caller
//! // presents a certificate from that CA: here the administrator's, kept beside it.
//! let identity = ConnectOptions::admin_beside(&ca);
//! let node = ConnectOptions { node: address, ca, identity, ..ConnectOptions::default() };
//! let echo = ContainerOptions::new("echo", node.clone());
//! tokio::spawn(reef_sdk::run(echo, Echo));
//!
//! let client = Client::connect(&node).await?;
//! // The container attaches in the background: until then its alias is unknown.
//! let mut attempts = 0;
//! let reply = loop {
//!     match client.request("echo", "hello", Duration::from_secs(2)).await {
//!         Err(error) if error.code() == Code::NotFound && attempts < 500 => {
//!             attempts += 1;
//!             tokio::time::sleep(Duration::from_millis(10)).await;
//!         }
//!         other => break other?,
//!     }
//! };
//! assert_eq!(&reply[..], b"hello");
//! client.close().await?;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod client;
mod container;
mod endpoint;
mod error;
mod handler;
mod message;
mod options;
mod push;
mod request;
pub mod sample;
pub mod state;
mod task;
mod trace;

pub use self::{
    client::{Client, Registration, Reply},
    container::{ContainerOptions, DEFAULT_PARENT_TIMEOUT, run},
    error::{Error, HandlerError},
    handler::{Command, Context, Handler},
    message::Message,
    options::{ConnectOptions, DEFAULT_CA, DEFAULT_NODE},
    push::Push,
    request::{Cancellation, RequestOptions, SendOptions},
    task::{Restart, TASK_INTENSITY_ERROR, TaskOptions, Tasks},
};
pub use bytes::Bytes;
pub use tonic::Code;
