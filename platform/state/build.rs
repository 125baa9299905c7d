//! Generates the etcd v3 client from the trimmed etcd protos in `proto/etcd`, with protox
//! (pure Rust, like the workspace's own build.rs): the etcd-client crate's build script
//! needs a `protoc` binary, which a fresh machine does not have.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["etcd/rpc.proto", "etcd/kv.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
