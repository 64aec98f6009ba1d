//! The measurement loops against the running server: latency, sustained rate, density.

use super::*;

/// Sequential create → exec `true` → delete cycles on one keep-alive connection.
pub(super) async fn latency(cfg: &Config, api: &Api, res: &mut Results) -> anyhow::Result<()> {
    let (mut create, mut exec, mut delete, mut gone, mut cycle) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..cfg.warmup + cfg.iterations {
        let (id, c) = api.create().await?;
        let e = api.exec_true(&id).await?;
        let d = api.delete(&id).await?;
        let g = d + api.wait_gone(&id).await?;
        if i >= cfg.warmup {
            create.push(c);
            exec.push(e);
            delete.push(d);
            gone.push(g);
            cycle.push(c + e + g);
        }
    }
    res.create = Some(Stats::of(&create));
    res.exec = Some(Stats::of(&exec));
    res.delete = Some(Stats::of(&delete));
    res.delete_gone = Some(Stats::of(&gone));
    res.cycle = Some(Stats::of(&cycle));

    // The steady state of one sandbox: exec, and python by code_run vs a fresh python3.
    let (id, _) = api.create().await?;
    let (mut warm, mut code, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    let code_run = r#"{"code":"print(1)","language":"python"}"#;
    let fresh = r#"{"command":"python3 -u -c 'print(1)'"}"#;
    for i in 0..cfg.warmup.max(1) + cfg.iterations {
        let w = api.exec_true(&id).await?;
        let c = api.toolbox(&id, "process/code-run", code_run).await?;
        let f = api.toolbox(&id, "process/execute", fresh).await?;
        if i >= cfg.warmup.max(1) {
            warm.push(w);
            code.push(c);
            cold.push(f);
        }
    }
    api.delete(&id).await?;
    res.exec_warm = Some(Stats::of(&warm));
    res.code_run_warm = Some(Stats::of(&code));
    res.python_cold = Some(Stats::of(&cold));
    Ok(())
}

/// `clients` concurrent loops of create + delete for the configured time. Deletes finish in
/// the background, so the clock stops only once every sandbox deleted is gone: a backlog of
/// teardowns counts against the rate.
pub(super) async fn rate(cfg: &Config, api: &Api) -> Rate {
    let deadline = Instant::now() + cfg.rate;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..cfg.rate_clients {
        let client = api.another();
        tasks.push(tokio::spawn(async move {
            let (mut cycles, mut failures, mut first) = (0usize, 0usize, None);
            let mut deleted = Vec::new();
            while Instant::now() < deadline {
                let r = async {
                    let (id, _) = client.create().await?;
                    client.delete(&id).await?;
                    deleted.push(id);
                    anyhow::Ok(())
                }
                .await;
                match r {
                    Ok(()) => cycles += 1,
                    Err(e) => {
                        failures += 1;
                        first.get_or_insert_with(|| format!("{e:#}"));
                        // Do not spin on a broken server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            for id in &deleted {
                if let Err(e) = client.wait_gone(id).await {
                    failures += 1;
                    first.get_or_insert_with(|| format!("{e:#}"));
                }
            }
            (cycles, failures, first)
        }));
    }
    let mut out = Rate {
        clients: cfg.rate_clients,
        cycles: 0,
        failures: 0,
        first_failure: None,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        match task.await {
            Ok((c, f, first)) => {
                out.cycles += c;
                out.failures += f;
                if out.first_failure.is_none() {
                    out.first_failure = first;
                }
            }
            Err(e) => {
                out.failures += 1;
                out.first_failure.get_or_insert_with(|| e.to_string());
            }
        }
    }
    out.elapsed = t.elapsed();
    out
}

/// Runs `op` for items 0..n from `clients` concurrent clients; (failures, first failure).
pub(super) async fn fan_out<F, Fut>(
    api: &Api,
    clients: usize,
    n: usize,
    op: F,
) -> (usize, Option<String>)
where
    F: Fn(Arc<Api>, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = Arc::new(api.another());
        let (next, op) = (next.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let (mut failures, mut first) = (0usize, None);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || failures > 10 {
                    break;
                }
                if let Err(e) = op(client.clone(), i).await {
                    failures += 1;
                    first.get_or_insert_with(|| format!("{e:#}"));
                }
            }
            (failures, first)
        }));
    }
    let (mut failures, mut first) = (0, None);
    for task in tasks {
        match task.await {
            Ok((f, fst)) => {
                failures += f;
                if first.is_none() {
                    first = fst;
                }
            }
            Err(e) => {
                failures += 1;
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
    (failures, first)
}

/// Creates `n` idle sandboxes, measures the memory they hold, deletes them, and checks the
/// memory comes back and nothing is left.
pub(super) async fn density(cfg: &Config, api: &Api, server_pid: u32) -> Density {
    let n = cfg.density;
    let clients = cfg.rate_clients.min(n).max(1);
    settle().await;
    let mem_before = procfs::MemInfo::read();
    let cgroup_before_kib = procfs::cgroup_charged_kib(CGROUP_PARENT);
    // The server may keep sandboxes of its own (a warm pool): count only what the created
    // sandboxes add to that baseline.
    let agents_before = procfs::server_children_memory(server_pid);
    let cgroups_before = procfs::child_cgroups(CGROUP_PARENT).len();
    let ids = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let t = Instant::now();
    let ids2 = ids.clone();
    let (mut failures, mut first_failure) = fan_out(api, clients, n, move |c, _| {
        let ids = ids2.clone();
        async move {
            let (id, _) = c.create().await?;
            ids.lock().unwrap_or_else(|e| e.into_inner()).push(id);
            Ok(())
        }
    })
    .await;
    let create_time = t.elapsed();
    settle().await;
    let mem_held = procfs::MemInfo::read();
    let cgroup_held_kib = procfs::cgroup_charged_kib(CGROUP_PARENT);
    let held = procfs::server_children_memory(server_pid);
    let agents = procfs::TreeMemory {
        inits: held.inits.saturating_sub(agents_before.inits),
        processes: held.processes.saturating_sub(agents_before.processes),
        rss_kib: held.rss_kib.saturating_sub(agents_before.rss_kib),
        pss_kib: held.pss_kib.saturating_sub(agents_before.pss_kib),
    };

    let ids: Vec<String> = std::mem::take(&mut *ids.lock().unwrap_or_else(|e| e.into_inner()));
    let created = ids.len();
    let ids = Arc::new(ids);
    let t = Instant::now();
    let (f, first) = fan_out(api, clients, created, move |c, i| {
        let ids = ids.clone();
        async move {
            c.delete(&ids[i]).await?;
            c.wait_gone(&ids[i]).await?;
            Ok(())
        }
    })
    .await;
    let delete_time = t.elapsed();
    failures += f;
    if first_failure.is_none() {
        first_failure = first;
    }
    // The kernel frees part of a sandbox asynchronously (network namespaces, RCU): wait
    // up to 5 s for the pinned memory to come back.
    settle().await;
    let t = Instant::now();
    let mut mem_after = procfs::MemInfo::read();
    if let (Some(b), Some(h)) = (mem_before, mem_held) {
        let limit = b.pinned() + pinned_tolerance_kib(&b, &h);
        while t.elapsed() < Duration::from_secs(5) && mem_after.is_some_and(|a| a.pinned() > limit)
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
            mem_after = procfs::MemInfo::read();
        }
    }
    let returned_after = t.elapsed() + Duration::from_millis(500);
    Density {
        n,
        created,
        failures,
        first_failure,
        create_time,
        delete_time,
        mem_before,
        mem_held,
        mem_after,
        returned_after,
        cgroup_before_kib,
        cgroup_held_kib,
        agents,
        leftover_processes: procfs::server_children_memory(server_pid)
            .processes
            .saturating_sub(agents_before.processes),
        leftover_cgroups: procfs::child_cgroups(CGROUP_PARENT)
            .len()
            .saturating_sub(cgroups_before),
    }
}
