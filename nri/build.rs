//! Compiles NRI's `api.proto` (vendored: see `proto/VERSION` and
//! `scripts/update-nri-proto.sh`) and the ttrpc wire messages (`proto/ttrpc.proto`, written
//! for berth) into prost messages; berth's ttrpc client and server are its own (`ttrpc.rs`).

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_protos(&["proto/api.proto", "proto/ttrpc.proto"], &["proto"])
}
