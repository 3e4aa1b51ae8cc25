//! Removing what a test made, through CRI, as the kubelet would.

use std::time::Duration;

use berth_cri_api::v1 as cri;

/// The kubelet's clean-up through any CRI runtime (berth's or containerd's): every pod
/// stopped and removed, and, as the kubelet's next sync does, tried again a little later
/// while any is left (a call can fail while the runtime finishes what a crash left). What
/// the last round's calls answered goes to stderr, for a test that then finds a leak.
pub async fn remove_all_pods(
    rt: &mut cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
) {
    let mut errors = Vec::new();
    for round in 0..10 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let Ok(r) = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
        else {
            continue;
        };
        let pods = r.into_inner().items;
        if pods.is_empty() {
            return;
        }
        errors.clear();
        for p in pods {
            if let Err(e) = rt
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: p.id.clone(),
                })
                .await
            {
                errors.push(format!("StopPodSandbox {}: {e}", p.id));
            }
            if let Err(e) = rt
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: p.id.clone(),
                })
                .await
            {
                errors.push(format!("RemovePodSandbox {}: {e}", p.id));
            }
        }
    }
    if !errors.is_empty() {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("pods left after the clean-up:\n{}", errors.join("\n"));
        }
    }
}
