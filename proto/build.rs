//! Compiles the `.proto` files with protox (a Rust protobuf compiler), so building needs no
//! system `protoc`.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "stagecache/v1/cas.proto",
        "stagecache/v1/manifests.proto",
        "stagecache/v1/refs.proto",
        "stagecache/v1/ledger.proto",
        "stagecache/store/records.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Server reflection serves this descriptor set.
    std::fs::write(out.join("stagecache_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Blob data as `Bytes`: chunks pass through without copies.
        .bytes(".stagecache.v1")
        // Each message encoded into room reserved for its length (src/codec.rs).
        .codec_path("crate::codec::ReservingCodec")
        .compile_fds(fds)?;
    Ok(())
}
