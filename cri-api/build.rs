//! Compiles the vendored CRI `api.proto` (see `proto/VERSION` and
//! `scripts/update-cri-proto.sh`) into prost messages and tonic servers and clients.

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure()
        // Records and verbose `info` maps keep CRI messages as JSON.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        // RPCs newer than what berth implements answer Unimplemented, as the CRI asks of a
        // runtime that lacks them; the kubelet falls back.
        .generate_default_stubs(true)
        .compile_protos(&["proto/api.proto"], &["proto"])
}
