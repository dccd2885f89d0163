//! The manager's durable state in redb: every record of the placement state
//! machine, so that a restart loses nothing. One table per kind of record;
//! the records changed by one request are written in one transaction, so
//! the file is never left half-updated.
//!
//! ```text
//! components  u64 id          -> JSON Component (as last registered)
//! vnodes      u32 id          -> JSON Vnode
//! vregions    (asid, index)   -> (primary id, backup): backup 0 = none (one
//!                                copy), u64::MAX = a bad copy being rebuilt
//! owners      asid            -> owner (job) id
//! leases      asid            -> bytes of memory leased (quota accounting)
//! meta        "next_component_id" / "next_vnode_id" -> u64
//! ```
//!
//! With `--store etcd://...` the same records live on etcd instead
//! ([`crate::etcd`]): key `PREFIX/t/TABLE/KEY`, JSON values as here, the
//! numbers as decimal text, a vRegion's key `ASID.INDEX` and its value
//! `PRIMARY,BACKUP`; every write fenced by the leader's term.

use std::path::Path;

use lego_placement::{
    Asid, Backup, Component, Record, Records, Stored, VRegionAssignment, VRegionIdx, VRegionKey,
    Vnode,
};
use redb::{Database, ReadableTable, TableDefinition};

use crate::ManagerError;

const COMPONENTS: TableDefinition<u64, &str> = TableDefinition::new("components");
const VNODES: TableDefinition<u32, &str> = TableDefinition::new("vnodes");
const VREGIONS: TableDefinition<(u64, u64), (u64, u64)> = TableDefinition::new("vregions");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const OWNERS: TableDefinition<u64, u64> = TableDefinition::new("owners");
const LEASES: TableDefinition<u64, u64> = TableDefinition::new("leases");

/// How a backup is kept in the `vregions` table.
const NO_BACKUP: u64 = 0;
const BAD_BACKUP: u64 = u64::MAX;

fn encode_backup(b: Option<Backup<u64>>) -> u64 {
    match b {
        None => NO_BACKUP,
        Some(Backup::Bad) => BAD_BACKUP,
        Some(Backup::On(id)) => id,
    }
}

fn decode_backup(v: u64) -> Option<Backup<u64>> {
    match v {
        NO_BACKUP => None,
        BAD_BACKUP => Some(Backup::Bad),
        id => Some(Backup::On(id)),
    }
}

/// The manager's database: a redb file, or etcd.
pub struct Db {
    backend: Backend,
}

enum Backend {
    Redb(Database),
    Etcd(Box<crate::etcd::Etcd>),
}

impl Db {
    /// Opens (creating if needed) the database file.
    pub fn open(path: &Path) -> Result<Self, ManagerError> {
        let db = Database::create(path).map_err(ManagerError::db)?;
        let tx = db.begin_write().map_err(ManagerError::db)?;
        tx.open_table(COMPONENTS).map_err(ManagerError::db)?;
        tx.open_table(VNODES).map_err(ManagerError::db)?;
        tx.open_table(VREGIONS).map_err(ManagerError::db)?;
        tx.open_table(META).map_err(ManagerError::db)?;
        tx.open_table(OWNERS).map_err(ManagerError::db)?;
        tx.open_table(LEASES).map_err(ManagerError::db)?;
        tx.commit().map_err(ManagerError::db)?;
        Ok(Db {
            backend: Backend::Redb(db),
        })
    }

    /// The records on etcd, written by this manager once elected.
    pub fn on_etcd(etcd: crate::etcd::Etcd) -> Self {
        Db {
            backend: Backend::Etcd(Box::new(etcd)),
        }
    }

    /// Where the records are, for logs and `lego status`.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Redb(_) => "redb".into(),
            Backend::Etcd(e) => format!("etcd://{}", e.endpoints()),
        }
    }

    /// The managers standing by on the same etcd (none on redb).
    pub fn standbys(&self) -> Vec<String> {
        match &self.backend {
            Backend::Redb(_) => Vec::new(),
            Backend::Etcd(e) => e.standbys(),
        }
    }

    /// The redb database, or the etcd store, for the tables kept outside
    /// the placement records ([`crate::identity`]).
    pub(crate) fn backend(&self) -> Result<&Database, &crate::etcd::Etcd> {
        match &self.backend {
            Backend::Redb(d) => Ok(d),
            Backend::Etcd(e) => Err(e),
        }
    }

    /// Every record, as [`lego_placement::Placement::restore`] takes them.
    pub fn load(&self) -> Result<Records, ManagerError> {
        let db = match &self.backend {
            Backend::Redb(d) => d,
            Backend::Etcd(e) => return load_etcd(e),
        };
        let tx = db.begin_read().map_err(ManagerError::db)?;
        let mut out = Records::default();
        let t = tx.open_table(COMPONENTS).map_err(ManagerError::db)?;
        for row in t.iter().map_err(ManagerError::db)? {
            let (k, v) = row.map_err(ManagerError::db)?;
            out.components.push(parse::<Component>(
                &format!("component {}", k.value()),
                v.value(),
            )?);
        }
        let t = tx.open_table(VNODES).map_err(ManagerError::db)?;
        for row in t.iter().map_err(ManagerError::db)? {
            let (k, v) = row.map_err(ManagerError::db)?;
            out.vnodes
                .push(parse::<Vnode>(&format!("vnode {}", k.value()), v.value())?);
        }
        let t = tx.open_table(VREGIONS).map_err(ManagerError::db)?;
        for row in t.iter().map_err(ManagerError::db)? {
            let (k, v) = row.map_err(ManagerError::db)?;
            let ((asid, index), (primary, backup)) = (k.value(), v.value());
            out.vregions.push((
                VRegionKey {
                    asid: Asid(asid),
                    index: VRegionIdx(index),
                },
                VRegionAssignment {
                    primary,
                    backup: decode_backup(backup),
                },
            ));
        }
        for (table, into) in [(OWNERS, &mut out.owners), (LEASES, &mut out.leases)] {
            let t = tx.open_table(table).map_err(ManagerError::db)?;
            for row in t.iter().map_err(ManagerError::db)? {
                let (k, v) = row.map_err(ManagerError::db)?;
                into.push((Asid(k.value()), v.value()));
            }
        }
        let t = tx.open_table(META).map_err(ManagerError::db)?;
        let get = |k: &str| -> Result<u64, ManagerError> {
            Ok(t.get(k).map_err(ManagerError::db)?.map_or(1, |v| v.value()))
        };
        out.next_component = get("next_component_id")?;
        out.next_vnode = get("next_vnode_id")?.min(u32::MAX as u64) as u32;
        Ok(out)
    }

    /// Writes changed records in one durable transaction.
    pub fn apply(&self, changes: &[Stored]) -> Result<(), ManagerError> {
        if changes.is_empty() {
            return Ok(());
        }
        let db = match &self.backend {
            Backend::Redb(d) => d,
            Backend::Etcd(e) => {
                return e.commit(&changes.iter().map(etcd_change).collect::<Vec<_>>())
            }
        };
        let tx = db.begin_write().map_err(ManagerError::db)?;
        {
            let mut comps = tx.open_table(COMPONENTS).map_err(ManagerError::db)?;
            let mut vnodes = tx.open_table(VNODES).map_err(ManagerError::db)?;
            let mut vregions = tx.open_table(VREGIONS).map_err(ManagerError::db)?;
            let mut meta = tx.open_table(META).map_err(ManagerError::db)?;
            let mut owners = tx.open_table(OWNERS).map_err(ManagerError::db)?;
            let mut leases = tx.open_table(LEASES).map_err(ManagerError::db)?;
            for c in changes {
                let done = match c {
                    Stored::Component(c) => {
                        let json = serde_json::to_string(c).expect("serializable");
                        comps.insert(c.id, json.as_str()).map(drop)
                    }
                    Stored::Vnode(v) => {
                        let json = serde_json::to_string(v).expect("serializable");
                        vnodes.insert(v.id, json.as_str()).map(drop)
                    }
                    Stored::VRegion(k, a) => vregions
                        .insert((k.asid.0, k.index.0), (a.primary, encode_backup(a.backup)))
                        .map(drop),
                    Stored::Owner(a, o) => owners.insert(a.0, o).map(drop),
                    Stored::Lease(a, b) => leases.insert(a.0, b).map(drop),
                    Stored::NextIds { component, vnode } => {
                        let first = meta.insert("next_component_id", *component).map(drop);
                        first.and_then(|()| {
                            meta.insert("next_vnode_id", u64::from(*vnode)).map(drop)
                        })
                    }
                    Stored::Gone(Record::Component(id)) => comps.remove(id).map(drop),
                    Stored::Gone(Record::Vnode(id)) => vnodes.remove(id).map(drop),
                    Stored::Gone(Record::VRegion(k)) => {
                        vregions.remove((k.asid.0, k.index.0)).map(drop)
                    }
                    Stored::Gone(Record::Owner(a)) => owners.remove(a.0).map(drop),
                    Stored::Gone(Record::Lease(a)) => leases.remove(a.0).map(drop),
                    Stored::Gone(Record::NextIds) => Ok(()),
                };
                done.map_err(ManagerError::db)?;
            }
        }
        tx.commit().map_err(ManagerError::db)
    }
}

/// One record's change, as kept on etcd.
fn etcd_change(c: &Stored) -> crate::etcd::Change {
    use crate::etcd::Change;
    let put = |table, key: String, value: String| Change {
        table,
        key,
        value: Some(value.into_bytes()),
    };
    let gone = |table, key: String| Change {
        table,
        key,
        value: None,
    };
    match c {
        Stored::Component(c) => put("components", c.id.to_string(), json(c)),
        Stored::Vnode(v) => put("vnodes", v.id.to_string(), json(v)),
        Stored::VRegion(k, a) => put(
            "vregions",
            format!("{}.{}", k.asid.0, k.index.0),
            format!("{},{}", a.primary, encode_backup(a.backup)),
        ),
        Stored::Owner(a, o) => put("owners", a.0.to_string(), o.to_string()),
        Stored::Lease(a, b) => put("leases", a.0.to_string(), b.to_string()),
        // Two keys in one change: the caller's transaction holds both.
        Stored::NextIds { component, vnode } => {
            put("meta", "next_ids".into(), format!("{component},{vnode}"))
        }
        Stored::Gone(Record::Component(id)) => gone("components", id.to_string()),
        Stored::Gone(Record::Vnode(id)) => gone("vnodes", id.to_string()),
        Stored::Gone(Record::VRegion(k)) => gone("vregions", format!("{}.{}", k.asid.0, k.index.0)),
        Stored::Gone(Record::Owner(a)) => gone("owners", a.0.to_string()),
        Stored::Gone(Record::Lease(a)) => gone("leases", a.0.to_string()),
        Stored::Gone(Record::NextIds) => gone("meta", "next_ids".into()),
    }
}

/// A record as JSON.
pub(crate) fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serializable")
}

/// Every record on etcd.
fn load_etcd(e: &crate::etcd::Etcd) -> Result<Records, ManagerError> {
    let text = |what: &str, v: &[u8]| -> Result<String, ManagerError> {
        String::from_utf8(v.to_vec())
            .map_err(|_| ManagerError::Etcd(format!("{what} is not UTF-8")))
    };
    let num = |what: &str, v: &str| -> Result<u64, ManagerError> {
        v.parse()
            .map_err(|_| ManagerError::Etcd(format!("{what} is not a number: {v:?}")))
    };
    let mut out = Records::default();
    for (k, v) in e.scan("components")? {
        let what = format!("component {k}");
        out.components.push(parse(&what, &text(&what, &v)?)?);
    }
    for (k, v) in e.scan("vnodes")? {
        let what = format!("vnode {k}");
        out.vnodes.push(parse(&what, &text(&what, &v)?)?);
    }
    for (k, v) in e.scan("vregions")? {
        let what = format!("vregion {k}");
        let v = text(&what, &v)?;
        let (asid, index) = k
            .split_once('.')
            .ok_or_else(|| ManagerError::Etcd(format!("{what}: the key is not ASID.INDEX")))?;
        let (primary, backup) = v.split_once(',').ok_or_else(|| {
            ManagerError::Etcd(format!("{what}: the value is not PRIMARY,BACKUP"))
        })?;
        out.vregions.push((
            VRegionKey {
                asid: Asid(num(&what, asid)?),
                index: VRegionIdx(num(&what, index)?),
            },
            VRegionAssignment {
                primary: num(&what, primary)?,
                backup: decode_backup(num(&what, backup)?),
            },
        ));
    }
    for (table, into) in [("owners", &mut out.owners), ("leases", &mut out.leases)] {
        for (k, v) in e.scan(table)? {
            let what = format!("{table} {k}");
            into.push((Asid(num(&what, &k)?), num(&what, &text(&what, &v)?)?));
        }
    }
    out.next_component = 1;
    out.next_vnode = 1;
    for (k, v) in e.scan("meta")? {
        if k == "next_ids" {
            let v = text("next ids", &v)?;
            let (c, n) = v
                .split_once(',')
                .ok_or_else(|| ManagerError::Etcd("next ids: not COMPONENT,VNODE".into()))?;
            out.next_component = num("next ids", c)?;
            out.next_vnode = num("next ids", n)?.min(u32::MAX as u64) as u32;
        }
    }
    Ok(out)
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    what: &str,
    json: &str,
) -> Result<T, ManagerError> {
    serde_json::from_str(json).map_err(|source| ManagerError::Corrupt {
        what: what.to_string(),
        source,
    })
}
