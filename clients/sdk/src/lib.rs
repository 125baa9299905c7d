//! Write reef containers and clients in Rust.
//!
//! A **container** is a [`Handler`] run with [`run`]: the SDK registers its alias with the
//! node, opens the attach stream, serves `reef.v1.Container` on a TLS endpoint with a
//! certificate the node issues, and calls the handler one message at a time.
//! A **client** is a [`Client`]: send messages and make requests through a node.
//!
//! ```no_run
//! use std::time::Duration;
//! use reef_sdk::{Client, ConnectOptions};
//!
//! # async fn demo() -> Result<(), reef_sdk::Error> {
//! let client = Client::connect(&ConnectOptions::from_env()).await?;
//! let reply = client.request("echo", "hello", Duration::from_secs(2)).await?;
//! println!("{}", String::from_utf8_lossy(&reply));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod container;
mod endpoint;
mod error;
mod options;

pub use self::{
    client::{Client, Registration},
    container::{Command, ContainerOptions, Context, Handler, Message, run},
    error::{Error, HandlerError},
    options::{ConnectOptions, DEFAULT_CA, DEFAULT_NODE},
};
pub use bytes::Bytes;
pub use tonic::Code;
