//! The manager's durable state on etcd (`--store etcd://HOST:PORT,...`),
//! and the election of one leader among the managers that share it.
//!
//! ```text
//! PREFIX/leader            the leader's address, under its lease (TTL)
//! PREFIX/standby/ADDR      a manager standing by, under a lease of its own
//! PREFIX/t/TABLE/KEY       one record: the same tables as the redb store
//!                          (components, vnodes, vregions, owners, leases,
//!                          meta, tokens, members), values as there
//! ```
//!
//! Election: a manager campaigns by creating `PREFIX/leader` under a lease
//! of its own, in a transaction that succeeds only if the key does not
//! exist; the key's create revision is its term. Until then it stands by,
//! asking again every second, and does not serve. A leader keeps its lease
//! alive every quarter of the TTL; if it could not for two thirds of the TTL
//! it stops
//! acting at once (the process exits: a supervisor starts it again, as a
//! standby), well before the lease ends and another can be elected.
//!
//! Warm standbys: a standby keeps a copy of every record, read whole once
//! and then brought up to date every second by reading only the keys
//! modified since (and the key list, for deletes); elected, it catches up
//! once more and loads from the copy.
//!
//! Fencing: every write is one transaction guarded by "the leader key's
//! create revision is still my term". A deposed leader's write (its lease
//! lost, another elected) is refused by etcd itself, and the deposed
//! manager exits.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use tracing::{error, info, warn};

use crate::ManagerError;

/// How long one etcd call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a standby asks whether the leader is gone.
const CAMPAIGN_EVERY: Duration = Duration::from_millis(500);
/// The most operations in one transaction (etcd's default limit is 128;
/// `lego up` starts etcd with a larger one).
pub const MAX_TXN_OPS: usize = 10_000;

/// A connection to etcd, and this manager's term once elected.
pub struct Etcd {
    /// One worker thread, always running: the client's connections are
    /// driven by tasks on it (a runtime driven only inside `block_on`
    /// would leave the lease keeper's calls hanging between writes).
    rt: std::sync::Arc<tokio::runtime::Runtime>,
    client: Members,
    prefix: String,
    endpoints: String,
    /// (lease id, create revision of the leader key) once elected.
    term: Option<(i64, i64)>,
    /// The records as a standby keeps them ([`Warm`]); read by `scan`
    /// until this leader's first write.
    warm: std::sync::Mutex<Option<Warm>>,
}

/// Every record (`PREFIX/t/...`, full key to value) as of etcd revision
/// `rev`: a standby reads them all once, then every second only what
/// changed (keys modified since `rev`, and the list of keys, for deletes),
/// and once more when elected; so a new leader reads only the last
/// second's changes, not the whole state.
struct Warm {
    rev: i64,
    kvs: std::collections::BTreeMap<String, Vec<u8>>,
}

/// How often a standby brings its copy of the records up to date.
const WARM_EVERY: Duration = Duration::from_secs(1);

/// One change of a record: put (`Some`) or delete (`None`).
pub struct Change {
    pub table: &'static str,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

fn etcd_err(what: &str, e: impl std::fmt::Display) -> ManagerError {
    ManagerError::Etcd(format!("{what}: {e}"))
}

/// Whether a failed call may succeed on another try: the client spreads
/// calls over the members, and one that is down fails the calls sent to
/// it until the channel notices.
fn transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

/// How long to wait before trying a call again.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

impl Etcd {
    /// Connects to the etcd cluster at `url`: `etcd://HOST:PORT[,HOST:PORT...]`.
    pub fn connect(url: &str, prefix: &str) -> Result<Etcd, ManagerError> {
        let hosts = url.strip_prefix("etcd://").ok_or_else(|| {
            ManagerError::Etcd(format!(
                "a store is redb (the default) or etcd://HOST:PORT[,HOST:PORT...], not {url:?}"
            ))
        })?;
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("http://{h}"))
            .collect();
        if endpoints.is_empty() {
            return Err(ManagerError::Etcd(format!("{url:?} names no etcd host")));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("manager-etcd")
            .enable_all()
            .build()
            .map_err(|e| etcd_err("cannot start the etcd client's runtime", e))?;
        let client = Members::new(endpoints);
        // Fails early, and clearly, when no member answers at all.
        retry(&rt, &client, CALL_TIMEOUT, |mut c| async move {
            c.status().await.map(drop)
        })
        .map_err(|e| etcd_err(&format!("cannot reach etcd at {hosts}"), e))?;
        Ok(Etcd {
            rt: std::sync::Arc::new(rt),
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
            endpoints: hosts.to_string(),
            term: None,
            warm: std::sync::Mutex::new(None),
        })
    }

    /// Where the store is, for logs and `lego status`.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Runs `f` with a client, again while it fails transiently, for at
    /// most [`CALL_TIMEOUT`].
    fn call<T, Fut>(&self, what: &str, f: impl Fn(Client) -> Fut) -> Result<T, ManagerError>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        retry(&self.rt, &self.client, CALL_TIMEOUT, f).map_err(|e| etcd_err(what, e))
    }

    fn leader_key(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    fn table_prefix(&self, table: &str) -> String {
        format!("{}/t/{table}/", self.prefix)
    }

    /// The leader's address, if there is one.
    pub fn leader(&self) -> Result<Option<String>, ManagerError> {
        let key = self.leader_key();
        let r = self.call("cannot read the leader", |mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })?;
        Ok(r.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Stands by until this manager (`me`, the address it serves at) is
    /// elected leader with a lease of `ttl`; `standing_by` is told who
    /// leads meanwhile (each time that changes).
    pub fn campaign(
        &mut self,
        me: &str,
        ttl: Duration,
        mut standing_by: impl FnMut(Option<&str>),
    ) -> Result<(), ManagerError> {
        let ttl_s = ttl.as_secs().max(2) as i64;
        let key = self.leader_key();
        let mut last_seen: Option<Option<String>> = None;
        let mut listed: Option<i64> = None;
        let mut warmed: Option<Instant> = None;
        loop {
            listed = self.list_standby(me, ttl_s, listed);
            if warmed.is_none_or(|t| t.elapsed() >= WARM_EVERY) {
                self.warm_up();
                warmed = Some(Instant::now());
            }
            let mut c = match self.rt.block_on(self.client.get()) {
                Ok(c) => c,
                Err(e) => {
                    self.client.failed();
                    if last_seen.as_ref() != Some(&None) {
                        warn!(store = %self.endpoints, "cannot campaign, trying again: {e}");
                        standing_by(None);
                        last_seen = Some(None);
                    }
                    std::thread::sleep(CAMPAIGN_EVERY);
                    continue;
                }
            };
            let tried = self.rt.block_on(async {
                let lease = c.lease_grant(ttl_s, None).await?.id();
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        me,
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let r = c.txn(txn).await?;
                if r.succeeded() {
                    let term = r.header().map_or(0, |h| h.revision());
                    return Ok::<_, etcd_client::Error>(Ok((lease, term)));
                }
                let _ = c.lease_revoke(lease).await;
                let leader = r.op_responses().into_iter().find_map(|op| match op {
                    etcd_client::TxnOpResponse::Get(g) => g
                        .kvs()
                        .first()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                    _ => None,
                });
                Ok(Err(leader))
            });
            match tried {
                Ok(Ok(term)) => {
                    if let Some(lease) = listed {
                        let _ = retry(&self.rt, &self.client, CALL_TIMEOUT, |mut c| async move {
                            c.lease_revoke(lease).await.map(drop)
                        });
                    }
                    self.term = Some(term);
                    // Every write before this term is in etcd now, and no
                    // other can come (fenced): catching up makes it exact.
                    let t = Instant::now();
                    let (records, changed) = self.warm_up();
                    info!(store = %self.endpoints, term = term.1, records, changed,
                        caught_up_ms = t.elapsed().as_millis() as u64, "elected leader");
                    return Ok(());
                }
                Ok(Err(leader)) => {
                    if last_seen.as_ref() != Some(&leader) {
                        standing_by(leader.as_deref());
                        last_seen = Some(leader);
                    }
                }
                Err(e) => {
                    if last_seen.as_ref() != Some(&None) {
                        warn!(store = %self.endpoints, "cannot campaign, trying again: {e}");
                        standing_by(None);
                        last_seen = Some(None);
                    }
                }
            }
            std::thread::sleep(CAMPAIGN_EVERY);
        }
    }

    /// Lists this standby under `PREFIX/standby/ME` (a lease of its own,
    /// renewed each round); returns the lease, None if etcd cannot be told.
    fn list_standby(&self, me: &str, ttl_s: i64, lease: Option<i64>) -> Option<i64> {
        let key = format!("{}/standby/{me}", self.prefix);
        let r = retry(&self.rt, &self.client, CALL_TIMEOUT, |mut c| {
            let key = key.clone();
            async move {
                if let Some(l) = lease {
                    if c.lease_keep_alive(l).await.is_ok() {
                        return Ok(l);
                    }
                }
                let l = c.lease_grant(ttl_s, None).await?.id();
                c.put(key, "", Some(PutOptions::new().with_lease(l)))
                    .await?;
                Ok(l)
            }
        });
        r.ok()
    }

    /// The managers standing by (their addresses).
    pub fn standbys(&self) -> Vec<String> {
        let prefix = format!("{}/standby/", self.prefix);
        retry(&self.rt, &self.client, CALL_TIMEOUT, |mut c| {
            let prefix = prefix.clone();
            async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .map(|r| {
            r.kvs()
                .iter()
                .map(|kv| {
                    let k = String::from_utf8_lossy(kv.key());
                    k.strip_prefix(&prefix).unwrap_or(&k).to_string()
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// Keeps the leader's lease alive on a thread of its own. If it could
    /// not for two thirds of `ttl`, this manager may no longer be the leader by
    /// the time anyone acts on its answers: `lost` is called (it exits).
    pub fn keep_leading(
        &self,
        ttl: Duration,
        lost: impl FnOnce(String) + Send + 'static,
    ) -> Result<(), ManagerError> {
        let (lease, _) = self
            .term
            .ok_or_else(|| ManagerError::Etcd("not elected".into()))?;
        let client = self.client.clone();
        let rt = self.rt.clone();
        std::thread::Builder::new()
            .name("manager-lease".into())
            .spawn(move || {
                let every = ttl / 4;
                // Before the lease can end on etcd's clock (it counts from
                // when etcd took the last renewal, after we sent it).
                let give_up = ttl * 2 / 3;
                let mut last_ok = Instant::now();
                loop {
                    std::thread::sleep(every);
                    let c = client.clone();
                    // Opening the keep-alive stream renews the lease once
                    // and reads the answer: that is all a renewal needs.
                    // Tried again (another member) until two thirds of it are gone.
                    let left = give_up.saturating_sub(last_ok.elapsed());
                    let kept = retry(&rt, &c, left, |mut c| async move {
                        c.lease_keep_alive(lease).await.map(drop)
                    });
                    match kept {
                        Ok(()) => last_ok = Instant::now(),
                        Err(etcd_client::Error::LeaseKeepAliveError(e)) => {
                            return lost(format!("the leader's lease is gone ({e})"))
                        }
                        Err(e) => warn!("cannot renew the leader's lease: {e}"),
                    }
                    if last_ok.elapsed() >= give_up {
                        return lost(format!(
                            "the leader's lease could not be renewed for {:?}",
                            last_ok.elapsed()
                        ));
                    }
                }
            })
            .map_err(|e| etcd_err("cannot start the lease keeper", e))?;
        Ok(())
    }

    /// Brings the standby's copy of the records up to date ([`Warm`]);
    /// returns how many records it holds and how many it read now. On
    /// failure the copy is dropped (the records are then read whole when
    /// needed).
    fn warm_up(&self) -> (usize, usize) {
        let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        let all = format!("{}/t/", self.prefix);
        let since = warm.as_ref().map(|w| w.rev);
        let got = self.call("cannot read the records", |mut c| {
            let all = all.clone();
            async move {
                let Some(since) = since else {
                    let r = c.get(all, Some(GetOptions::new().with_prefix())).await?;
                    return Ok((r, None));
                };
                let changed = c
                    .get(
                        all.clone(),
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_min_mod_revision(since + 1),
                        ),
                    )
                    .await?;
                let rev = changed.header().map_or(0, |h| h.revision());
                let keys = c
                    .get(
                        all,
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_keys_only()
                                .with_revision(rev),
                        ),
                    )
                    .await?;
                Ok((changed, Some(keys)))
            }
        });
        let (changed, keys) = match got {
            Ok(r) => r,
            Err(e) => {
                warn!("cannot keep the records warm: {e}");
                *warm = None;
                return (0, 0);
            }
        };
        let rev = changed.header().map_or(0, |h| h.revision());
        let w = warm.get_or_insert_with(|| Warm {
            rev,
            kvs: Default::default(),
        });
        w.rev = rev;
        if let Some(keys) = keys {
            let live: std::collections::BTreeSet<&[u8]> =
                keys.kvs().iter().map(|kv| kv.key()).collect();
            w.kvs.retain(|k, _| live.contains(k.as_bytes()));
        }
        for kv in changed.kvs() {
            w.kvs.insert(
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            );
        }
        (w.kvs.len(), changed.kvs().len())
    }

    /// Every record of `table`: (key, value).
    pub fn scan(&self, table: &str) -> Result<Vec<(String, Vec<u8>)>, ManagerError> {
        let prefix = self.table_prefix(table);
        if let Some(w) = self.warm.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(w
                .kvs
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k[prefix.len()..].to_string(), v.clone()))
                .collect());
        }
        let r = self.call(&format!("cannot read {table}"), |mut c| {
            let prefix = prefix.clone();
            async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })?;
        Ok(r.kvs()
            .iter()
            .map(|kv| {
                let k = String::from_utf8_lossy(kv.key());
                (
                    k.strip_prefix(&prefix).unwrap_or(&k).to_string(),
                    kv.value().to_vec(),
                )
            })
            .collect())
    }

    /// Writes `changes` in one transaction, only while this manager's term
    /// lasts (fenced): a deposed leader's write is refused by etcd.
    pub fn commit(&self, changes: &[Change]) -> Result<(), ManagerError> {
        // From this leader's first write on, etcd alone is the truth.
        *self.warm.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if changes.is_empty() {
            return Ok(());
        }
        let (_, term) = self
            .term
            .ok_or_else(|| ManagerError::Etcd("writing before being elected".into()))?;
        if changes.len() > MAX_TXN_OPS {
            return Err(ManagerError::Etcd(format!(
                "{} changes in one transaction; at most {MAX_TXN_OPS}",
                changes.len()
            )));
        }
        let ops: Vec<TxnOp> = changes
            .iter()
            .map(|c| {
                let key = format!("{}{}", self.table_prefix(c.table), c.key);
                match &c.value {
                    Some(v) => TxnOp::put(key, v.clone(), None),
                    None => TxnOp::delete(key, None),
                }
            })
            .collect();
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.leader_key(),
                CompareOp::Equal,
                term,
            )])
            .and_then(ops);
        // Puts and deletes under the same guard: a try that did go through
        // before its answer was lost is harmless to repeat.
        let r = self.call("cannot write to etcd", |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })?;
        if !r.succeeded() {
            error!(
                term,
                "etcd refused a write: this manager is no longer the leader"
            );
            return Err(ManagerError::Deposed);
        }
        Ok(())
    }
}

// The client's own error type, as it gives it.
#[expect(
    clippy::result_large_err,
    reason = "etcd_client::Error as the client returns it"
)]
/// Runs `f` on `rt` with a client of a member, again (on the next member)
/// while it fails transiently; each try within [`TRY_TIMEOUT`], all within
/// `limit`.
fn retry<T, Fut>(
    rt: &tokio::runtime::Runtime,
    members: &Members,
    limit: Duration,
    f: impl Fn(Client) -> Fut,
) -> Result<T, etcd_client::Error>
where
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = rt.block_on(async {
            let c = members.get().await?;
            match tokio::time::timeout(left.min(TRY_TIMEOUT), f(c)).await {
                Ok(r) => r,
                Err(_) => Err(etcd_client::Error::GRpcStatus(
                    tonic::Status::deadline_exceeded(format!(
                        "no answer within {:?}",
                        left.min(TRY_TIMEOUT)
                    )),
                )),
            }
        });
        match r {
            Err(e) if transient(&e) => {
                members.failed();
                if Instant::now() + RETRY_PAUSE >= deadline {
                    return Err(e);
                }
                std::thread::sleep(RETRY_PAUSE);
            }
            r => return r,
        }
    }
}

/// How long one try of a call may take before the next member is tried.
const TRY_TIMEOUT: Duration = Duration::from_millis(700);

/// A client for each etcd member, connected when first used; calls go to
/// one member until it fails, then to the next.
#[derive(Clone)]
struct Members {
    inner: std::sync::Arc<std::sync::Mutex<MembersInner>>,
}

struct MembersInner {
    endpoints: Vec<String>,
    clients: Vec<Option<Client>>,
    current: usize,
}

impl Members {
    fn new(endpoints: Vec<String>) -> Members {
        let n = endpoints.len();
        Members {
            inner: std::sync::Arc::new(std::sync::Mutex::new(MembersInner {
                endpoints,
                clients: vec![None; n],
                current: 0,
            })),
        }
    }

    /// The client of the current member (connecting it first if needed).
    async fn get(&self) -> Result<Client, etcd_client::Error> {
        let (i, endpoint, have) = {
            let g = lego_transport::lock(&self.inner);
            let i = g.current;
            (i, g.endpoints[i].clone(), g.clients[i].clone())
        };
        if let Some(c) = have {
            return Ok(c);
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(TRY_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        match Client::connect([endpoint], Some(opts)).await {
            Ok(c) => {
                lego_transport::lock(&self.inner).clients[i] = Some(c.clone());
                Ok(c)
            }
            // The caller moves on to the next member.
            Err(e) => Err(e),
        }
    }

    /// The current member failed a call: forget its client, use the next.
    fn failed(&self) {
        let mut g = lego_transport::lock(&self.inner);
        let i = g.current;
        g.clients[i] = None;
        g.current = (i + 1) % g.endpoints.len();
    }
}
