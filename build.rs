//! Compiles `proto/` into Rust once for the whole workspace.
//!
//! protox parses the .proto files in pure Rust, because a fresh machine has no `protoc`.
//! protox does not write the descriptor set that server reflection serves, so this script
//! writes it next to the generated code.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTOS: &[&str] = &[
    "reef/v1/envelope.proto",
    "reef/v1/routing.proto",
    "reef/v1/channel.proto",
    "reef/v1/supervisor.proto",
    "reef/v1/container.proto",
    "reef/v1/state.proto",
    "reef/v1/files.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("reef_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Payloads are shared, not copied, as they pass through the router.
        .bytes(".reef.v1")
        // Envelopes are moved several times per hop: keep them small. An error is rare
        // (boxed) and an empty BTreeMap allocates nothing.
        .boxed(".reef.v1.Envelope.error")
        .btree_map(".reef.v1.Envelope.headers")
        .server_mod_attribute(".reef.v1", r#"#[cfg(feature = "server")]"#)
        .compile_fds(descriptors)?;
    Ok(())
}
