use berth_e2e::apps::{create, ctr, env_with, exec, start};

#[tokio::test(flavor = "multi_thread")]
async fn stop_after_restart() {
    let mut env = env_with("").await;
    let pcfg = berth_e2e::pods::pod_config("survivor");
    let pod = env.run(pcfg.clone()).await.unwrap();
    let id = create(&env, &pod, &pcfg, ctr("main", &["sh", "-c", "sleep 3600"]))
        .await
        .unwrap();
    start(&env, &id).await;
    env.berth.kill();
    env.berth.restart().unwrap();
    env.reconnect().await.unwrap();
    let r = exec(&env, &id, &["sh", "-c", "echo hi"], 60).await.unwrap();
    assert_eq!(r.exit_code, 0);
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}
