//! Compiles the vendored CRI `api.proto` (see `proto/VERSION` and
//! `scripts/update-cri-proto.sh`) into prost messages and tonic servers and clients, and the
//! small part of containerd's API in `proto/containerd/` (written for berth).

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure()
        // Records and verbose `info` maps keep CRI messages as JSON.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        // RPCs newer than what berth implements answer Unimplemented, as the CRI asks of a
        // runtime that lacks them; the kubelet falls back.
        .generate_default_stubs(true)
        .compile_protos(&["proto/api.proto"], &["proto"])?;
    // The containerd calls the kubelet's cAdvisor makes (see `proto/containerd/`): servers
    // only need the declared methods, clients are for the tests.
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/containerd/wire.proto",
            "proto/containerd/version.proto",
            "proto/containerd/containers.proto",
            "proto/containerd/tasks.proto",
        ],
        &["proto"],
    )?;
    // The kubelet's device plugin API, for the tests' device plugin.
    tonic_prost_build::configure()
        .compile_protos(&["proto/deviceplugin/deviceplugin.proto"], &["proto"])
}
