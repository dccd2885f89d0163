//! The failure injector of `lego chaos` and its final report.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lego_transport::{lock, ClientOptions, Credentials, Redial};
use lego_wire::control::MemStatsReq;
use lego_wire::Role;

use super::{alive, complete, healthy, secs, Chaos, ChaosArgs, Injected, Rng, Victim};
use crate::Result;

/// Injects failures until the duration is over; returns what it did.
pub(super) fn inject(
    c: &Chaos,
    a: &ChaosArgs,
    seed: u64,
    interrupted: &std::sync::atomic::AtomicBool,
) -> Vec<Injected> {
    let mut rng = Rng(seed);
    let mut done = Vec::new();
    let end = c.start + a.duration;
    let every = a.every.as_millis().max(100) as u64;
    while Instant::now() < end {
        let pause = Instant::now() + Duration::from_millis(every / 2 + rng.below(every));
        while Instant::now() < pause.min(end) && !interrupted.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if interrupted.load(Ordering::Relaxed) {
            c.say("interrupted: no more failures");
            break;
        }
        if Instant::now() >= end {
            break;
        }
        // Half the failures are memory monitors (one in four of them with
        // the manager killed too, while it rebuilds the copies), a quarter
        // each the manager and the storage monitor.
        let n = done.len() + 1;
        let unrecovered = done
            .iter()
            .any(|i: &Injected| i.victim == Victim::Memory && i.recovered_ms.is_none());
        let i = match rng.below(8) {
            // After a memory failure that did not recover, another could
            // take the last copy of something: no more of those.
            0..=3 if unrecovered => None,
            0..=2 => kill_memory(c, a, &mut rng, n, false),
            3 => kill_memory(c, a, &mut rng, n, true),
            4 | 5 => kill_manager(c, a.memory_monitors, &mut rng, n).map(|i| vec![i]),
            _ => request_storage_kill(c, n).map(|i| vec![i]),
        };
        done.extend(i.into_iter().flatten());
    }
    done
}

fn kill_memory(
    c: &Chaos,
    a: &ChaosArgs,
    rng: &mut Rng,
    n: usize,
    and_manager: bool,
) -> Option<Vec<Injected>> {
    // Never both copies of a vRegion: only from a whole, healthy cluster.
    let ready = c.wait(Duration::from_secs(30), |s| {
        alive(s, Role::Memory) >= a.memory_monitors && healthy(s, None)
    });
    if ready.is_none() {
        c.say(&format!(
            "#{n} skipped: the cluster is not whole and healthy"
        ));
        return None;
    }
    let s = c.state()?;
    let live: Vec<_> = s.alive(Role::Memory).collect();
    let victim = live[rng.below(live.len() as u64) as usize];
    let copies = s
        .vregions
        .iter()
        .filter(|r| {
            r.primary == victim.id || r.backup.and_then(|b| b.on().copied()) == Some(victim.id)
        })
        .count();
    let name = lock(&c.cluster)
        .memory_at(&victim.addr)
        .map(|d| d.name.clone())
        .ok()?;
    let t = Instant::now();
    if let Err(e) = lock(&c.cluster).kill9(&name) {
        c.say(&format!("#{n} cannot kill {name}: {e}"));
        return None;
    }
    let dead = Some(victim.id);
    let mut also = Vec::new();
    if and_manager {
        // While it detects the death and rebuilds the copies.
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        also.extend(kill_manager(c, a.memory_monitors - 1, rng, n));
    }
    let back = c.wait(Duration::from_secs(60), |s| healthy(s, dead));
    let rec = back.map(|_| t.elapsed().as_millis() as u64);
    // A new, empty memory monitor takes its place.
    let t_join = Instant::now();
    let joined = lock(&c.cluster).add_memory(c.capacity, None);
    let joined = joined.ok().and_then(|addr| {
        c.wait(Duration::from_secs(30), |s| {
            s.alive(Role::Memory).any(|x| x.addr == addr)
        })
    });
    let joined = joined.map(|_| t_join.elapsed());
    c.say(&format!(
        "#{n} kill -9 memory monitor {} ({}), {copies} vRegion copies on it: every vRegion has two live copies again after {}; a new memory monitor joined {}",
        victim.id,
        victim.addr,
        rec.map_or("NEVER (60 s)".into(), secs),
        joined.map_or("NEVER".into(), |d| format!("{} later", secs(d.as_millis() as u64)))
    ));
    also.push(Injected {
        victim: Victim::Memory,
        recovered_ms: rec,
    });
    Some(also)
}

/// Kills the manager and starts it again; `memory`: the memory monitors
/// that must be back for it to count as recovered.
fn kill_manager(c: &Chaos, memory: usize, rng: &mut Rng, n: usize) -> Option<Injected> {
    // With several managers on etcd, the one that leads now.
    let name = {
        let cluster = lock(&c.cluster);
        if cluster.standbys.is_empty() {
            "manager".to_string()
        } else {
            match cluster.leader() {
                Ok((name, _)) => name,
                Err(e) => {
                    c.say(&format!("#{n} skipped: no manager leads ({e})"));
                    return None;
                }
            }
        }
    };
    let t = Instant::now();
    if let Err(e) = lock(&c.cluster).kill9(&name) {
        c.say(&format!("#{n} cannot kill the {name}: {e}"));
        return None;
    }
    let down = Duration::from_millis(500 + rng.below(2500));
    std::thread::sleep(down);
    if let Err(e) = lock(&c.cluster).restart(&name) {
        c.say(&format!("#{n} cannot restart the {name}: {e}"));
        return None;
    }
    let back = c.wait(Duration::from_secs(60), |s| complete(s, memory));
    let rec = back.map(|_| t.elapsed().as_millis() as u64);
    c.say(&format!(
        "#{n} kill -9 {name}{}, restarted after {}: every component registered again {} after its kill",
        if name == "manager" && lock(&c.cluster).standbys.is_empty() { "" } else { " (the leader)" },
        secs(down.as_millis() as u64),
        rec.map_or("NEVER (60 s)".into(), secs)
    ));
    Some(Injected {
        victim: Victim::Manager,
        recovered_ms: rec,
    })
}

fn request_storage_kill(c: &Chaos, n: usize) -> Option<Injected> {
    *lock(&c.storage_recovered_ms) = None;
    c.storage_kill.store(true, Ordering::Relaxed);
    let t = Instant::now();
    // The file program kills it after its next fsync.
    while c.storage_kill.load(Ordering::Relaxed) {
        if t.elapsed() > Duration::from_secs(120) {
            c.say(&format!(
                "#{n} skipped: no file program reached an fsync in 120 s"
            ));
            c.storage_kill.store(false, Ordering::Relaxed);
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rec = lock(&c.storage_recovered_ms).take()?;
    c.say(&format!("#{n} (storage monitor, above)"));
    Some(Injected {
        victim: Victim::Storage,
        recovered_ms: rec,
    })
}

fn summary(ms: &[u64]) -> String {
    if ms.is_empty() {
        return "-".into();
    }
    let mut v = ms.to_vec();
    v.sort_unstable();
    format!(
        "p50 {}, max {}",
        secs(v[v.len() / 2]),
        secs(*v.last().expect("not empty"))
    )
}

/// Waits for the cluster to settle, counts leaked pages, prints the
/// report; returns the exit code (0: no wrong output, no failed program,
/// no leaked page, every failure recovered).
pub(super) fn report(c: &Chaos, a: &ChaosArgs, injected: &[Injected]) -> Result<i32> {
    let settled = c.wait(Duration::from_secs(60), |s| {
        complete(s, a.memory_monitors) && healthy(s, None) && s.vregions.is_empty()
    });
    let addrs: Vec<String> = c
        .state()
        .map(|s| s.alive(Role::Memory).map(|x| x.addr.clone()).collect())
        .unwrap_or_default();
    let opts = ClientOptions {
        request_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    let mut leaked = 0u64;
    for addr in &addrs {
        let held = Redial::new(
            addr.clone(),
            Credentials::component(&c.target.secret),
            opts.clone(),
        )
        .call(&MemStatsReq)
        .map(|m| m.pages_held);
        match held {
            Ok(n) => leaked += n,
            Err(e) => println!("cannot ask memory monitor {addr} for its pages: {e}"),
        }
    }
    let t = &c.tally;
    let g = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
    println!("\n== lego chaos report ==");
    println!(
        "ran {} of failures (seed {}), {} memory monitors, heartbeats every {} ms",
        secs(a.duration.as_millis() as u64),
        a.seed.map_or("from the clock".into(), |s| s.to_string()),
        a.memory_monitors,
        a.heartbeat_ms
    );
    println!("failures injected: {}", injected.len());
    let mut unrecovered = 0;
    for victim in Victim::ALL {
        let kind = victim.label();
        let of: Vec<&Injected> = injected.iter().filter(|i| i.victim == victim).collect();
        let ms: Vec<u64> = of.iter().filter_map(|i| i.recovered_ms).collect();
        unrecovered += of.len() - ms.len();
        println!(
            "  {kind:<16} {:>3} killed, {:>3} recovered; recovery {}",
            of.len(),
            ms.len(),
            summary(&ms)
        );
    }
    println!(
        "  (memory monitor: until every vRegion had two live copies again; manager: until every component had registered again; storage monitor: until it served again)"
    );
    println!(
        "memory programs: {} right, {} WRONG, {} failed",
        g(&t.right),
        g(&t.wrong),
        g(&t.failed)
    );
    println!(
        "file programs:   {} right, {} WRONG, {} failed",
        g(&t.file_right),
        g(&t.file_wrong),
        g(&t.file_failed)
    );
    println!(
        "leaked pages at the end: {leaked} on {} live memory monitors{}",
        addrs.len(),
        if settled.is_some() {
            ""
        } else {
            " (the cluster did not settle within 60 s)"
        }
    );
    let ok = g(&t.wrong) == 0
        && g(&t.file_wrong) == 0
        && g(&t.failed) == 0
        && g(&t.file_failed) == 0
        && leaked == 0
        && unrecovered == 0
        && settled.is_some();
    println!("verdict: {}", if ok { "PASS" } else { "FAIL" });
    Ok(if ok { 0 } else { 1 })
}
