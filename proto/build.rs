// protoc comes from the vendored crate, so a machine with only the Rust toolchain builds.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .bytes(".weft.WriteReq.data")
        .bytes(".weft.ReadReply.data")
        .compile_protos(&["proto/weft.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/weft.proto");
    Ok(())
}
