//! The report: the table printed after a run and the JSON written with `--json`.

use super::*;

pub(super) fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "n/a".into())
}

pub(super) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The ratios of the summary, from p50s: (label, value).
pub(super) fn ratios(res: &Results) -> Vec<(&'static str, f64)> {
    let cycle = res.cycle.map(|s| s.p50);
    let create = res.create.map(|s| s.p50);
    let (floor, bwrap, podman) = match &res.peers {
        Some(p) => (p.floor.p50(), p.bwrap.p50(), p.podman.p50()),
        None => (None, None, None),
    };
    [
        (
            "podman run / corral create+exec+delete",
            ratio(podman, cycle),
        ),
        ("corral create+exec+delete / bwrap", ratio(cycle, bwrap)),
        ("corral create / bwrap", ratio(create, bwrap)),
        ("podman run / bwrap", ratio(podman, bwrap)),
        (
            "fresh python3 / warm code_run (print(1))",
            ratio(
                res.python_cold.map(|s| s.p50),
                res.code_run_warm.map(|s| s.p50),
            ),
        ),
        ("bwrap / plain true", ratio(bwrap, floor)),
        (
            "corral create+exec+delete / plain true",
            ratio(cycle, floor),
        ),
    ]
    .into_iter()
    .filter_map(|(l, r)| r.map(|r| (l, r)))
    .collect()
}

pub(super) fn render(cfg: &Config, res: &Results) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "corral bench{}: {} corral cycles after {} warm-up; peers: {}; sustained: {}; density: {}",
        if cfg.quick { " --quick" } else { "" },
        cfg.iterations,
        cfg.warmup,
        if cfg.peers {
            format!(
                "true {}, bwrap {}, podman {}",
                cfg.floor_n, cfg.bwrap_n, cfg.podman_n
            )
        } else {
            "off".into()
        },
        if cfg.rate.is_zero() {
            "off".to_owned()
        } else {
            format!(
                "{:.1} s x {} clients",
                cfg.rate.as_secs_f64(),
                cfg.rate_clients
            )
        },
        if cfg.density > 0 {
            cfg.density.to_string()
        } else {
            "off".into()
        }
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "{:<44} {:>8} {:>8} {:>8} {:>5}  target",
        "latency (ms)", "p50", "p90", "p99", "n"
    );
    let row = |w: &mut String, name: &str, st: Option<Stats>, target: &str| match st {
        Some(st) => {
            let _ = writeln!(
                w,
                "{name:<44} {:>8.2} {:>8.2} {:>8.2} {:>5}  {target}",
                st.p50, st.p90, st.p99, st.n
            );
        }
        None => {
            let _ = writeln!(w, "{name:<44} {:>8}", "n/a");
        }
    };
    row(
        w,
        "corral POST /api/sandbox (create)",
        res.create,
        "p50<=5 p99<=25",
    );
    row(w, "corral exec true, first in a new sandbox", res.exec, "");
    row(
        w,
        "corral exec true, running sandbox",
        res.exec_warm,
        "p50<=2",
    );
    row(
        w,
        "corral code_run print(1) (warm python)",
        res.code_run_warm,
        ">=3x faster",
    );
    row(
        w,
        "corral exec python3 -c print(1) (cold)",
        res.python_cold,
        "",
    );
    row(w, "corral DELETE /api/sandbox/{id}", res.delete, "p50<=5");
    row(w, "corral delete until gone (404)", res.delete_gone, "");
    if let Some(f) = &res.forks {
        let _ = writeln!(
            w,
            "{:<44} {:>8.2}",
            format!("corral snapshot, {} MiB new (first: flushes)", f.mib),
            f.first_snapshot.as_secs_f64() * 1000.0
        );
        row(
            w,
            &format!("corral snapshot, {} MiB new, running", f.mib),
            Some(f.snapshot),
            "",
        );
        row(
            w,
            "corral create from that snapshot",
            Some(f.create_from_snapshot),
            "",
        );
        row(
            w,
            &format!("corral fork, {} MiB new, until started", f.mib),
            Some(f.fork),
            "",
        );
        row(
            w,
            &format!("  (cp -a --reflink=never of the {} MiB)", f.mib),
            Some(f.copy),
            "",
        );
    }
    if let Some(f) = &res.wake {
        row(
            w,
            "corral pause (freeze a running sandbox)",
            Some(f.pause),
            "",
        );
        row(
            w,
            "corral exec true, paused (wakes it)",
            Some(f.wake_exec),
            "",
        );
        row(w, "  (exec true, same sandbox running)", Some(f.exec), "");
        let _ = writeln!(
            w,
            "{:<44} {:>8.2}",
            "  wake added to a call (p50 difference)",
            f.added_ms()
        );
    }
    row(w, "corral create+exec+delete until gone", res.cycle, "");
    if let Some(p) = &res.peers {
        for (name, peer) in [
            ("plain true (fork+exec+wait, floor)", &p.floor),
            ("bwrap create+exec+exit", &p.bwrap),
            ("podman run --rm true", &p.podman),
        ] {
            match peer {
                Peer::Measured { stats, .. } => row(w, name, Some(*stats), ""),
                Peer::Skipped(reason) => {
                    let _ = writeln!(w, "{name:<44} skipped: {reason}");
                }
            }
        }
        for (name, peer) in [("bwrap", &p.bwrap), ("podman", &p.podman)] {
            if let Peer::Measured { command, note, .. } = peer {
                let _ = writeln!(w, "  {name}: {command}");
                if let Some(n) = note {
                    let _ = writeln!(w, "  {name}: {n}");
                }
            }
        }
    }

    let _ = writeln!(w);
    let _ = writeln!(w, "{:<44} {:>26}  target", "throughput and server", "");
    if let Some(r) = &res.rate {
        let _ = writeln!(
            w,
            "{:<44} {:>16.1} cycles/s  >=300/s   ({} cycles in {:.2} s until all gone, {} failures)",
            format!("sustained create+delete, {} clients", r.clients),
            r.per_second(),
            r.cycles,
            r.elapsed.as_secs_f64(),
            r.failures
        );
    }
    let _ = writeln!(
        w,
        "{:<44} {:>16.1} ms        <=200 ms",
        "server cold start to /ready",
        res.ready.as_secs_f64() * 1000.0
    );
    let _ = writeln!(
        w,
        "{:<44} {:>16} MiB       <=30 MiB",
        "server RSS after startup",
        opt(res.rss_startup_kib.map(mib), 1)
    );
    let _ = writeln!(
        w,
        "{:<44} {:>16} MiB",
        "server RSS after the runs (all deleted)",
        opt(res.rss_after_kib.map(mib), 1)
    );
    let _ = writeln!(
        w,
        "{:<44} {:>16}",
        "left after deletes + stop (procs, cgroups, net)",
        format!(
            "{}, {}, {}",
            res.leftover_processes, res.leftover_cgroups, res.leftover_net
        )
    );

    if let Some(d) = &res.density {
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "density: {} idle sandboxes held at once ({} created, {} failures)",
            d.n, d.created, d.failures
        );
        let secs = d.create_time.as_secs_f64();
        let _ = writeln!(
            w,
            "{:<44} {:>16.2} s         ({:.0}/s)",
            "time to create them",
            secs,
            d.created as f64 / secs.max(1e-9)
        );
        let _ = writeln!(
            w,
            "{:<44} {:>16} MiB each  <=1.5 MiB",
            "host MemAvailable drop (noisy: shared host)",
            opt(d.host_mib_each(), 3)
        );
        match d.pinned_mib_each() {
            Some((total, anon, slab, other)) => {
                let _ = writeln!(
                    w,
                    "{:<44} {:>16.3} MiB each  (anon+shmem {anon:.3}, unreclaimable slab {slab:.3}, stacks+page tables {other:.3})",
                    "host non-reclaimable memory rise", total
                );
            }
            None => {
                let _ = writeln!(
                    w,
                    "{:<44} {:>16}",
                    "host non-reclaimable memory rise", "n/a"
                );
            }
        }
        let per = |kib: u64| mib(kib) / d.created.max(1) as f64;
        let _ = writeln!(
            w,
            "{:<44} {:>16.3} MiB each  ({} inits, {} processes added)",
            "agents RSS",
            per(d.agents.rss_kib),
            d.agents.inits,
            d.agents.processes
        );
        let _ = writeln!(
            w,
            "{:<44} {:>16.3} MiB each",
            "agents PSS",
            per(d.agents.pss_kib)
        );
        let _ = writeln!(
            w,
            "{:<44} {:>16} MiB each",
            "memory charged to the sandboxes' cgroups",
            opt(d.cgroup_mib_each(), 3)
        );
        let _ = writeln!(
            w,
            "{:<44} {:>16.2} s",
            "time to delete them (until gone)",
            d.delete_time.as_secs_f64()
        );
        let held_total = d
            .mem_before
            .zip(d.mem_held)
            .map(|(b, h)| mib_signed(h.pinned(), b.pinned()));
        let still = d.mem_before.zip(d.mem_after).map(|(b, a)| {
            format!(
                "slab {:.1}, anon+shmem {:.1}",
                mib_signed(a.slab_unreclaimable, b.slab_unreclaimable),
                mib_signed(a.anon + a.shmem, b.anon + b.shmem)
            )
        });
        let _ = writeln!(
            w,
            "{:<44} {:>16} MiB total (of {} MiB; {}; {} after {:.1} s)",
            "non-reclaimable memory still held after",
            opt(d.not_returned_mib().map(|r| r.0), 1),
            opt(held_total, 1),
            still.unwrap_or_default(),
            match d.returned() {
                Some(true) => "returned",
                Some(false) => "NOT returned",
                None => "unknown",
            },
            d.returned_after.as_secs_f64()
        );
        let _ = writeln!(
            w,
            "{:<44} {:>16} MiB total",
            "MemAvailable still missing after",
            opt(d.not_returned_mib().map(|r| r.1), 1),
        );
        let _ = writeln!(
            w,
            "{:<44} {:>16}",
            "left after the deletes (processes, cgroups)",
            format!("{}, {}", d.leftover_processes, d.leftover_cgroups)
        );
    }

    let _ = writeln!(w);
    let _ = writeln!(w, "summary (ratios of p50):");
    let rs = ratios(res);
    if rs.is_empty() {
        let _ = writeln!(w, "  no peer measured");
    }
    for (label, r) in rs {
        let _ = writeln!(w, "  {label:<42} = {r:.1}x");
    }
    if let Some(r) = &res.rate {
        let _ = writeln!(
            w,
            "  {:<42} = {:.0}/s ({} failures)",
            "sustained create+delete cycles",
            r.per_second(),
            r.failures
        );
    }
    if let Some(d) = &res.density {
        let _ = writeln!(
            w,
            "  {:<42} = {} MiB non-reclaimable, {} MiB MemAvailable, {:.2} MiB agent PSS",
            "memory per idle sandbox",
            opt(d.pinned_mib_each().map(|p| p.0), 2),
            opt(d.host_mib_each(), 2),
            mib(d.agents.pss_kib) / d.created.max(1) as f64
        );
    }
    s
}

pub(super) fn to_json(cfg: &Config, res: &Results) -> serde_json::Value {
    let st = |s: Option<Stats>| s.map(|s| s.json());
    let peers = res.peers.as_ref().map(|p| {
        json!({
            "true": p.floor.json(),
            "bwrap": p.bwrap.json(),
            "podman": p.podman.json(),
        })
    });
    let rate = res.rate.as_ref().map(|r| {
        json!({
            "clients": r.clients,
            "cycles": r.cycles,
            "seconds": round3(r.elapsed.as_secs_f64()),
            "cycles_per_second": round3(r.per_second()),
            "failures": r.failures,
            "first_failure": r.first_failure,
        })
    });
    let density = res.density.as_ref().map(|d| {
        let meminfo: serde_json::Map<String, serde_json::Value> =
            ["before", "held", "after_delete"]
                .iter()
                .zip([d.mem_before, d.mem_held, d.mem_after])
                .map(|(k, m)| {
                    let v = m.map(|m| {
                        json!({
                            "available": m.available,
                            "anon": m.anon,
                            "shmem": m.shmem,
                            "slab_unreclaimable": m.slab_unreclaimable,
                            "stacks_page_tables_percpu": m.kernel_other,
                        })
                    });
                    ((*k).to_owned(), v.unwrap_or_default())
                })
                .collect();
        let per = |kib: u64| round3(mib(kib) / d.created.max(1) as f64);
        json!({
            "sandboxes": d.n,
            "created": d.created,
            "failures": d.failures,
            "first_failure": d.first_failure,
            "create_seconds": round3(d.create_time.as_secs_f64()),
            "delete_seconds": round3(d.delete_time.as_secs_f64()),
            "host_mib_per_sandbox": d.host_mib_each().map(round3),
            "agent_rss_mib_per_sandbox": per(d.agents.rss_kib),
            "agent_pss_mib_per_sandbox": per(d.agents.pss_kib),
            "agent_inits": d.agents.inits,
            "agent_processes": d.agents.processes,
            "cgroup_mib_per_sandbox": d.cgroup_mib_each().map(round3),
            "pinned_mib_per_sandbox": d.pinned_mib_each().map(|(t, a, s, o)| json!({
                "total": round3(t),
                "anon_shmem": round3(a),
                "slab_unreclaimable": round3(s),
                "stacks_page_tables_percpu": round3(o),
            })),
            "meminfo_kib": meminfo,
            "after_delete_mib": d.not_returned_mib().map(|(p, a)| json!({
                "pinned_still_held": round3(p),
                "available_still_missing": round3(a),
            })),
            "memory_returned": d.returned(),
            "returned_after_seconds": round3(d.returned_after.as_secs_f64()),
            "leftover_processes": d.leftover_processes,
            "leftover_cgroups": d.leftover_cgroups,
        })
    });
    let ratios: serde_json::Map<String, serde_json::Value> = ratios(res)
        .into_iter()
        .map(|(l, r)| (l.to_owned(), round3(r).into()))
        .collect();
    json!({
        "config": {
            "quick": cfg.quick,
            "iterations": cfg.iterations,
            "warmup": cfg.warmup,
            "peer_iterations": {"true": cfg.floor_n, "bwrap": cfg.bwrap_n, "podman": cfg.podman_n},
            "peers": cfg.peers,
            "rate_seconds": cfg.rate.as_secs_f64(),
            "rate_clients": cfg.rate_clients,
            "density": cfg.density,
        },
        "host": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
        },
        "server": {
            "ready_ms": round3(res.ready.as_secs_f64() * 1000.0),
            "rss_startup_mib": res.rss_startup_kib.map(|k| round3(mib(k))),
            "rss_after_runs_mib": res.rss_after_kib.map(|k| round3(mib(k))),
            "leftover_processes": res.leftover_processes,
            "leftover_cgroups": res.leftover_cgroups,
            "leftover_net": res.leftover_net,
        },
        "corral": {
            "create": st(res.create),
            "exec_true": st(res.exec),
            "exec_true_running_sandbox": st(res.exec_warm),
            "code_run_python_warm": st(res.code_run_warm),
            "exec_python3_cold": st(res.python_cold),
            "delete": st(res.delete),
            "delete_until_gone": st(res.delete_gone),
            "snapshot_and_fork": res.forks.as_ref().map(forks::Figures::json),
            "pause_and_wake": res.wake.as_ref().map(wake::Figures::json),
            "create_exec_delete": st(res.cycle),
        },
        "rate": rate,
        "density": density,
        "peers": peers,
        "ratios_p50": ratios,
    })
}
