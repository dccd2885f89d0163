//! What an operator sees, driven as an operator would: `lego top` in a real
//! terminal (tmux, 80x24, keys sent, the screen read back), the manager's
//! dashboard in a real headless Chromium, the fault-latency histogram read
//! back from `/metrics`, the Grafana dashboard's queries checked against
//! the metrics a cluster exports, and the benches' SVG plots parsed.
//! Each watches a real python3 under the runtime whose output must be the
//! same, byte for byte, as python3's own.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Python reading random bytes of 96 MiB until the file `stop` appears in
/// its working directory (or 3 minutes pass), then printing a hash that
/// does not depend on how long it ran.
const WALK: &str = r#"
import hashlib, os, random, time
r = random.Random(7)
buf = bytearray(r.randbytes(96 << 20))
t0 = time.monotonic()
x = 0
while not os.path.exists("stop") and time.monotonic() - t0 < 180:
    for _ in range(5000):
        x ^= buf[r.randrange(0, len(buf))]
print(hashlib.sha256(buf).hexdigest())
"#;

/// What WALK prints, from python3 itself.
fn walk_expected() -> Vec<u8> {
    let o = Command::new(python())
        .args([
            "-c",
            "import hashlib, random; print(hashlib.sha256(random.Random(7).randbytes(96 << 20)).hexdigest())",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    o.stdout
}

/// A cluster of every kind of monitor, and WALK started under lego with a
/// 16 MiB ExCache (most of its 96 MiB on the memory monitors).
fn cluster_with_walk() -> (TestCluster, Child) {
    ensure_runtime();
    let mut c = TestCluster::start(2, "512MiB", 200);
    c.start_storage();
    c.start_processor("256MiB");
    std::fs::write(c.work().join("walk.py"), WALK).unwrap();
    let _ = std::fs::remove_file(c.work().join("stop"));
    let child = c
        .run_command(&["--excache", "16MiB"], &["python3", "walk.py"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (c, child)
}

/// Tells WALK to stop and checks its output against python3's own.
fn stop_walk(c: &TestCluster, child: Child) {
    std::fs::write(c.work().join("stop"), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, walk_expected(), "byte for byte");
}

fn http(addr: &str, path: &str, header: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{header}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A metric's samples in Prometheus text: labels -> value.
fn samples(metrics: &str, name: &str) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, v) = rest.rsplit_once(' ')?;
            (labels.is_empty() || labels.starts_with('{'))
                .then(|| (labels.to_string(), v.parse().unwrap()))
        })
        .collect()
}

/// `lego top` in tmux: a private server (its own socket), one 80x24 window.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cmd: &str) -> Tmux {
        let socket = format!("lego-test-{}", std::process::id());
        let t = Tmux { socket };
        let o = t.cmd(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "80",
            "-y",
            "24",
            cmd,
        ]);
        assert!(
            o.status.success(),
            "tmux (apt-get install tmux; .ci/run does): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        t
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("tmux is not installed: apt-get install tmux (.ci/run does)")
    }

    fn screen(&self) -> String {
        String::from_utf8(self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).unwrap()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend(keys);
        assert!(self.cmd(&args).status.success());
    }

    /// Waits until the screen satisfies `f`; the last screen on failure.
    fn wait(&self, what: &str, secs: u64, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "lego top never showed {what}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The job row of `cmd` on a `lego top` screen (box edges removed), split
/// into its columns.
fn job_row(screen: &str, cmd: &str) -> Option<Vec<String>> {
    screen.lines().find(|l| l.contains(cmd)).map(|l| {
        l.trim_matches(|c: char| c == '│' || c.is_whitespace())
            .split_whitespace()
            .map(str::to_string)
            .collect()
    })
}

#[test]
fn lego_top_in_tmux_shows_a_running_job_its_faults_and_its_histogram() {
    let (c, walk) = cluster_with_walk();
    let secret = c.path().join("secret");
    let top = format!(
        "{LEGO} top --manager {} --secret-file {}",
        c.manager_addr,
        secret.display()
    );
    let t = Tmux::start(&top);
    // The job's row, with remote faults a second (the 4th column) above 0.
    let busy = t.wait("python3 with remote faults", 90, |s| {
        job_row(s, "python3 walk").is_some_and(|r| {
            r.get(3)
                .and_then(|v| v.trim_end_matches('k').parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        })
    });
    eprintln!("lego top, 80x24, while python3 runs:\n{busy}");
    let lines: Vec<&str> = busy.lines().collect();
    assert!(lines.len() <= 24, "{busy}");
    assert!(lines.iter().all(|l| l.chars().count() <= 80), "{busy}");
    for part in [
        "components",
        "memory",
        "processor",
        "jobs: 1 running",
        "q quit",
    ] {
        assert!(busy.contains(part), "{part}: {busy}");
    }
    // Plain text, not a terminal: the same row.
    let once = c.cli(&["top", "--once"]);
    let text = String::from_utf8_lossy(&once.stdout);
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    let row = job_row(&text, "python3 walk").unwrap_or_else(|| panic!("{text}"));
    assert_eq!(row.len(), 11, "{text}");

    // Keys: sort by the next column, pick the job, show its histogram.
    t.keys(&["s"]);
    t.wait("the jobs sorted by resident memory", 10, |s| {
        s.contains("sorted by resident")
    });
    t.keys(&["Down", "Enter"]);
    let hist = t.wait("the job's fault-latency histogram", 10, |s| {
        s.contains("fault latency of job")
            && s.lines().any(|l| l.contains("us ") && l.contains('#'))
    });
    eprintln!("its histogram:\n{hist}");
    t.keys(&["Enter"]);
    t.wait("the journal again", 10, |s| {
        s.contains("vRegions and journal")
    });

    stop_walk(&c, walk);
    let idle = t.wait("the job gone", 30, |s| {
        job_row(s, "python3 walk").is_none() && s.contains("jobs: 0 running")
    });
    eprintln!("after it exited:\n{idle}");
    t.keys(&["q"]);
}

#[test]
fn fault_latency_is_a_prometheus_histogram_and_the_grafana_queries_name_real_metrics() {
    let (c, walk) = cluster_with_walk();
    let addr = c.http.clone().expect("the manager serves HTTP");
    let count = |m: &str| -> f64 {
        samples(m, "lego_processor_remote_fault_latency_seconds_count")
            .values()
            .sum()
    };
    // While it runs: buckets cumulative, +Inf = _count, a positive _sum.
    let m = wait_for(Duration::from_secs(90), "remote faults in /metrics", || {
        let m = http(&addr, "/metrics", "");
        (count(&m) > 100.0 && m.contains("lego_storage_requests_total")).then_some(m)
    });
    assert!(m.contains("# TYPE lego_processor_remote_fault_latency_seconds histogram"));
    let buckets = samples(&m, "lego_processor_remote_fault_latency_seconds_bucket");
    let mut by_le: Vec<(f64, f64)> = buckets
        .iter()
        .map(|(labels, v)| {
            let le = labels
                .split(",le=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            (
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                },
                *v,
            )
        })
        .collect();
    by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(by_le.len() >= 20, "{by_le:?}");
    assert!(
        by_le.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {by_le:?}"
    );
    assert_eq!(by_le.last().unwrap().1, count(&m));
    let sum: f64 = samples(&m, "lego_processor_remote_fault_latency_seconds_sum")
        .values()
        .sum();
    let mean = sum / count(&m);
    assert!(mean > 1e-7 && mean < 0.1, "mean fault latency {mean} s");
    // Counters are _total and never go down: the job's faults stay counted
    // after it ends.
    for l in m
        .lines()
        .filter(|l| l.starts_with("# TYPE ") && l.ends_with(" counter"))
    {
        assert!(l.split(' ').nth(2).unwrap().ends_with("_total"), "{l}");
    }
    // A real Prometheus scrapes the manager; every query of the Grafana
    // dashboard runs there, and the ones about faults have answers.
    let answers = prometheus_answers(&addr, &grafana_queries());
    for (q, n, first) in &answers {
        if q.contains("fault") && !q.contains("write_protect") && !q.contains("zero_filled") {
            assert!(*n > 0, "no answer to {q}");
            assert!(first.is_finite() && *first >= 0.0, "{q}: {first}");
        }
    }
    let p50 = answers
        .iter()
        .find(|(q, _, _)| q.starts_with("histogram_quantile(0.5,"))
        .unwrap()
        .2;
    assert!(
        p50 > 1e-6 && p50 < 0.1,
        "fault latency p50 from Prometheus: {p50} s"
    );
    eprintln!(
        "Prometheus: remote fault p50 {:.1} µs; {} of {} dashboard queries have answers",
        p50 * 1e6,
        answers.iter().filter(|a| a.1 > 0).count(),
        answers.len()
    );
    stop_walk(&c, walk);
    let during = count(&m);
    let after = wait_for(Duration::from_secs(10), "the finished job's faults", || {
        let m = http(&addr, "/metrics", "");
        let jobs: f64 = samples(&m, "lego_processor_jobs_running").values().sum();
        (jobs == 0.0).then_some(m)
    });
    assert!(count(&after) >= during, "{} < {during}", count(&after));
    assert!(
        samples(&after, "lego_processor_rt_faults_fetched_total")
            .values()
            .sum::<f64>()
            > 0.0
    );

    // Every metric the Grafana dashboard asks for is one the cluster exports.
    let exprs = grafana_queries();
    assert!(exprs.len() >= 20, "{exprs:?}");
    let exported: Vec<&str> = after
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    for e in &exprs {
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("lego_"))
        {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| exported.contains(b))
                .unwrap_or(name);
            assert!(exported.contains(&base), "{name} (in {e}) is not exported");
        }
    }
    let o = Command::new("promtool")
        .args(["check", "config"])
        .arg(repo().join("deploy/prometheus.yml"))
        .output()
        .expect("promtool is not installed: apt-get install prometheus (.ci/run does)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The queries of `deploy/grafana/lego.json`.
fn grafana_queries() -> Vec<String> {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/lego.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    exprs
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs Prometheus (the distribution's) on loopback scraping the manager
/// at `target` every second, waits for a few scrapes, and runs `queries`:
/// (query, number of series in the answer, the first one's value).
fn prometheus_answers(target: &str, queries: &[String]) -> Vec<(String, usize, f64)> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: lego\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = lego_cluster::etcd::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let _prom = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is not installed: apt-get install prometheus (.ci/run does)"),
    );
    let query = |q: &str| -> Option<serde_json::Value> {
        let s = std::net::TcpStream::connect(&listen).ok()?;
        drop(s);
        let out = http(
            &listen,
            &format!("/api/v1/query?query={}", url_encode(q)),
            "",
        );
        serde_json::from_str(out.split("\r\n\r\n").nth(1)?).ok()
    };
    // Scraped, with enough samples for rate() over the last minute.
    wait_for(
        Duration::from_secs(60),
        "Prometheus scraping the manager",
        || {
            // Successful scrapes only: `up` is 0 when the text does not parse.
            let v = query("sum_over_time(up{job=\"lego\"}[1m])")?;
            let n: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            (n >= 5.0).then_some(())
        },
    );
    queries
        .iter()
        .map(|q| {
            let v = query(q).unwrap_or_else(|| panic!("Prometheus did not answer {q}"));
            assert_eq!(v["status"], "success", "{q}: {v}");
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            let first = result
                .first()
                .and_then(|r| r["value"][1].as_str()?.parse().ok())
                .unwrap_or(f64::NAN);
            (q.clone(), result.len(), first)
        })
        .collect()
}

/// Headless Chromium (Debian's), as root, with nothing reaching outside.
fn chromium(args: &[&str], url: &str) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium is not installed: apt-get install chromium (.ci/run does)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// The page as the browser built it, after its scripts ran.
fn dom(url: &str) -> String {
    String::from_utf8(chromium(&["--virtual-time-budget=4000", "--dump-dom"], url).stdout).unwrap()
}

/// A chart series' attribute in the DOM.
fn series_attr(dom: &str, label: &str, attr: &str) -> String {
    let at = dom
        .find(&format!("data-label=\"{label}\""))
        .unwrap_or_else(|| panic!("no series {label}"));
    let tag = &dom[dom[..at].rfind('<').unwrap()..];
    let tag = &tag[..tag.find('>').unwrap()];
    tag.split(&format!("{attr}=\""))
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn the_dashboard_in_headless_chromium_shows_the_cluster_and_its_charts_move() {
    let (c, walk) = cluster_with_walk();
    let addr = c.http.clone().expect("the manager serves HTTP");
    let o = c.cli(&["dashboard"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let url = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let token = url.split("?token=").nth(1).unwrap().to_string();
    assert_eq!(url, format!("http://{addr}/?token={token}"));

    // The attacks: no token, a wrong one, a wrong cookie; the data too.
    let page = http(&addr, "/", "");
    assert!(
        page.starts_with("HTTP/1.1 401") && page.contains("lego dashboard"),
        "{page}"
    );
    assert!(http(&addr, "/?token=00", "").starts_with("HTTP/1.1 401"));
    let port = addr.rsplit(':').next().unwrap();
    assert!(
        http(&addr, "/", &format!("Cookie: lego_token_{port}=00\r\n")).starts_with("HTTP/1.1 401")
    );
    assert!(http(&addr, "/api/history", "").starts_with("HTTP/1.1 401"));
    assert!(http(&addr, "/state", "Cookie: a=1\r\n").starts_with("HTTP/1.1 401"));
    // The token buys a cookie that opens the page and its data.
    let opened = http(&addr, &format!("/?token={token}"), "");
    assert!(opened.starts_with("HTTP/1.1 303"), "{opened}");
    assert!(opened.contains(&format!(
        "Set-Cookie: lego_token_{port}={token}; Path=/; HttpOnly; SameSite=Strict"
    )));
    // The token under another manager's cookie name opens nothing here.
    let elsewhere = format!("Cookie: lego_token_1={token}\r\n");
    assert!(http(&addr, "/", &elsewhere).starts_with("HTTP/1.1 401"));
    let cookie = format!("Cookie: lego_token_{port}={token}\r\n");
    let page = http(&addr, "/", &cookie);
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("<title>lego</title>"));
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http") && !page.contains("@import"),
        "nothing is loaded from elsewhere"
    );
    assert!(http(&addr, "/api/history", &cookie).contains("\"samples\""));
    // Garbage for request heads: each answered or dropped, the server goes on.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..40 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let mut head = junk(&mut x, i * 37 % 700);
        head.extend_from_slice(b"\r\n\r\n");
        let _ = s.write_all(&head);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 4"), "{i}");
    }
    assert!(http(&addr, "/metrics", "").starts_with("HTTP/1.1 200"));

    // Wait for the faults to show in the history, then load the page twice.
    wait_for(Duration::from_secs(90), "faults in the history", || {
        let h = http(&addr, "/api/history", &cookie);
        let body = h.split("\r\n\r\n").nth(1)?;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let last = v["samples"].as_array()?.last()?.clone();
        (last["remote_faults"].as_f64()? > 0.0).then_some(())
    });
    let first = dom(&url);
    let state = c.cluster_state();
    for comp in &state.components {
        assert!(
            first.contains(&format!("data-component=\"{}\"", comp.id)),
            "component {} not on the map",
            comp.id
        );
        assert!(first.contains(&format!("{} {}", comp.role, comp.id)));
    }
    assert!(first.contains("host 127.0.0.1"), "the cluster map");
    assert!(
        first.contains("1 jobs running"),
        "the processor monitor's job"
    );
    assert!(first.contains("vRegion copies"));
    assert!(
        first.contains("files of 1 vNodes"),
        "the storage monitor holds the vNode's files"
    );
    let max: f64 = series_attr(&first, "remote (fetched)", "data-max")
        .parse()
        .unwrap();
    assert!(max > 0.0, "the faults chart shows the program's faults");
    std::thread::sleep(Duration::from_secs(3));
    let second = dom(&url);
    let (p1, p2) = (
        series_attr(&first, "remote (fetched)", "points"),
        series_attr(&second, "remote (fetched)", "points"),
    );
    assert_ne!(p1, p2, "the chart moved");
    let (n1, n2): (usize, usize) = (
        series_attr(&first, "remote (fetched)", "data-n")
            .parse()
            .unwrap(),
        series_attr(&second, "remote (fetched)", "data-n")
            .parse()
            .unwrap(),
    );
    assert!(n2 > n1 || n2 == 120, "{n1} then {n2} samples");

    // A screenshot: a page of several colours, mostly not blank.
    let shot = tempfile::tempdir().unwrap();
    let png = shot.path().join("dashboard.png");
    chromium(
        &[
            "--window-size=1280,1000",
            "--virtual-time-budget=4000",
            &format!("--screenshot={}", png.display()),
        ],
        &url,
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    let colours: std::collections::BTreeSet<&[u8]> = pixels.iter().copied().collect();
    let inked = pixels
        .iter()
        .filter(|p| p[..3].iter().any(|&v| v < 200))
        .count();
    assert_eq!((info.width, info.height), (1280, 1000));
    assert!(colours.len() > 50, "{} colours", colours.len());
    assert!(inked * 100 / pixels.len() >= 3, "{inked} inked pixels");
    if let Some(dir) = std::env::var_os("LEGO_TEST_SHOTS") {
        std::fs::copy(&png, Path::new(&dir).join("dashboard.png")).unwrap();
    }
    stop_walk(&c, walk);
}

/// Parses an SVG with python3's XML parser; its series' labels.
fn svg_series(path: &Path) -> Vec<String> {
    let o = Command::new(python())
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E\n\
             r = E.parse(sys.argv[1]).getroot()\n\
             assert r.tag == '{http://www.w3.org/2000/svg}svg', r.tag\n\
             for e in r.iter():\n    \
                 if e.get('class') == 'series': print(e.get('data-label'))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{} is not valid SVG: {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn bench(args: &[&str]) -> String {
    let o = Command::new(LEGO).arg("bench").args(args).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "lego bench {args:?}: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn the_benches_plot_valid_svg_with_one_series_per_configuration() {
    ensure_runtime();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = bench(&[
        "excache",
        "--quick",
        "--plot",
        d,
        "--no-programs",
        "--size",
        "32MiB",
        "--random-reads",
        "20000",
        "--rtt-ops",
        "2000",
        "--configs",
        "lego100,lego50,lego25,loop50,loop",
    ]);
    assert!(out.contains(&format!("plot: {d}/slowdown.svg")), "{out}");
    let mut slowdown = svg_series(&dir.path().join("slowdown.svg"));
    slowdown.sort();
    assert_eq!(slowdown, ["cgroup + swap on loop/tmpfs", "lego"]);
    let svg = std::fs::read_to_string(dir.path().join("slowdown.svg")).unwrap();
    assert_eq!(
        svg.matches("class=\"point\" data-label=\"lego\"").count(),
        3,
        "100, 50, 25%"
    );
    let latency = svg_series(&dir.path().join("fault-latency.svg"));
    assert!(
        latency.contains(&"lego, ExCache 25%".to_string()),
        "{latency:?}"
    );
    assert!(
        latency.iter().all(|l| l.starts_with("lego, ExCache")),
        "{latency:?}"
    );
    let throughput = svg_series(&dir.path().join("throughput.svg"));
    assert_eq!(
        throughput,
        [
            "local, no limit",
            "lego, ExCache 100%",
            "lego, ExCache 50%",
            "lego, ExCache 25%",
            "cgroup 50%, swap on loop/tmpfs",
            "cgroup 25%, swap on loop/tmpfs"
        ]
    );

    bench(&["memory", "--ops", "2000", "--plot", d]);
    let lat = svg_series(&dir.path().join("memory-latency.svg"));
    assert_eq!(lat.len(), 10, "5 measurements on 2 links: {lat:?}");
    assert!(
        lat.contains(&"page read, 1 in flight, plain".to_string()),
        "{lat:?}"
    );
    let mut links = svg_series(&dir.path().join("memory-throughput.svg"));
    links.sort();
    assert_eq!(links, ["bare TCP", "plaintext link", "sealed link"]);

    bench(&["storage", "--size", "8MiB", "--files", "100", "--plot", d]);
    assert_eq!(
        svg_series(&dir.path().join("storage.svg")),
        ["local disk", "lego vNode mount"]
    );
}
