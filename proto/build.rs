//! Generates the gRPC code from `peergrid.proto` with protox (a pure-Rust protobuf compiler), so
//! no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=peergrid.proto");
    let descriptors = protox::compile(["peergrid.proto"], ["."])?;
    tonic_prost_build::configure()
        .bytes(".peergrid.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
