//! Durable metadata in redb: everything the manager must still know after a
//! restart. One table per kind of record; records are written in one
//! transaction each, so the file is never left half-updated.
//!
//! ```text
//! components  u64 id          -> JSON Component (as last registered)
//! vnodes      u32 id          -> JSON Vnode
//! vregions    (asid, index)   -> (primary id, backup id)
//! owners      asid            -> owner (job) id
//! leases      asid            -> bytes of memory leased (quota accounting)
//! meta        "next_component_id" / "next_vnode_id" -> u64
//! ```

use std::path::Path;

use lego_placement::{Component, VRegionAssignment, VRegionKey, Vnode};
use redb::{Database, ReadableTable, TableDefinition};

use crate::ManagerError;

const COMPONENTS: TableDefinition<u64, &str> = TableDefinition::new("components");
const VNODES: TableDefinition<u32, &str> = TableDefinition::new("vnodes");
const VREGIONS: TableDefinition<(u64, u64), (u64, u64)> = TableDefinition::new("vregions");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const OWNERS: TableDefinition<u64, u64> = TableDefinition::new("owners");
const LEASES: TableDefinition<u64, u64> = TableDefinition::new("leases");

/// Everything loaded at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub components: Vec<Component>,
    pub vnodes: Vec<Vnode>,
    pub vregions: Vec<(VRegionKey, VRegionAssignment)>,
    pub owners: Vec<(u64, u64)>,
    pub leases: Vec<(u64, u64)>,
    pub next_component_id: u64,
    pub next_vnode_id: u32,
}

/// A change to persist.
#[derive(Debug)]
pub enum Change<'a> {
    Component(&'a Component),
    Vnode(&'a Vnode),
    DeleteVnode(u32),
    VRegion(VRegionKey, VRegionAssignment),
    DeleteVRegion(VRegionKey),
    Owner { asid: u64, owner: u64 },
    DeleteOwner(u64),
    Lease { asid: u64, bytes: u64 },
    DeleteLease(u64),
    NextIds { component: u64, vnode: u32 },
}

impl Change<'_> {
    /// The id counters of `st`, to persist with a change that used one.
    pub fn next_ids(st: &lego_placement::Placement) -> Change<'static> {
        Change::NextIds {
            component: st.next_component_id(),
            vnode: st.next_vnode_id(),
        }
    }
}

/// The manager's database.
pub struct Db {
    db: Database,
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
        Ok(Db { db })
    }

    pub fn load(&self) -> Result<Loaded, ManagerError> {
        let tx = self.db.begin_read().map_err(ManagerError::db)?;
        let mut out = Loaded::default();
        let t = tx.open_table(COMPONENTS).map_err(ManagerError::db)?;
        for row in t.iter().map_err(ManagerError::db)? {
            let (k, v) = row.map_err(ManagerError::db)?;
            out.components
                .push(parse(&format!("component {}", k.value()), v.value())?);
        }
        let t = tx.open_table(VNODES).map_err(ManagerError::db)?;
        for row in t.iter().map_err(ManagerError::db)? {
            let (k, v) = row.map_err(ManagerError::db)?;
            out.vnodes
                .push(parse(&format!("vnode {}", k.value()), v.value())?);
        }
        let t = tx.open_table(VREGIONS).map_err(ManagerError::db)?;
        for row in t.iter().map_err(ManagerError::db)? {
            let (k, v) = row.map_err(ManagerError::db)?;
            let ((asid, index), (primary, backup)) = (k.value(), v.value());
            out.vregions.push((
                VRegionKey { asid, index },
                VRegionAssignment {
                    primary,
                    backup: (backup != 0).then_some(backup),
                },
            ));
        }
        let t = tx.open_table(OWNERS).map_err(ManagerError::db)?;
        for row in t.iter().map_err(ManagerError::db)? {
            let (k, v) = row.map_err(ManagerError::db)?;
            out.owners.push((k.value(), v.value()));
        }
        let t = tx.open_table(LEASES).map_err(ManagerError::db)?;
        for row in t.iter().map_err(ManagerError::db)? {
            let (k, v) = row.map_err(ManagerError::db)?;
            out.leases.push((k.value(), v.value()));
        }
        let t = tx.open_table(META).map_err(ManagerError::db)?;
        let get = |k: &str| -> Result<u64, ManagerError> {
            Ok(t.get(k).map_err(ManagerError::db)?.map_or(1, |v| v.value()))
        };
        out.next_component_id = get("next_component_id")?;
        out.next_vnode_id = get("next_vnode_id")?.min(u32::MAX as u64) as u32;
        Ok(out)
    }

    /// Applies changes in one durable transaction.
    pub fn apply(&self, changes: &[Change<'_>]) -> Result<(), ManagerError> {
        if changes.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(ManagerError::db)?;
        {
            let mut comps = tx.open_table(COMPONENTS).map_err(ManagerError::db)?;
            let mut vnodes = tx.open_table(VNODES).map_err(ManagerError::db)?;
            let mut vregions = tx.open_table(VREGIONS).map_err(ManagerError::db)?;
            let mut meta = tx.open_table(META).map_err(ManagerError::db)?;
            let mut owners = tx.open_table(OWNERS).map_err(ManagerError::db)?;
            let mut leases = tx.open_table(LEASES).map_err(ManagerError::db)?;
            for c in changes {
                match c {
                    Change::Component(c) => {
                        let json = serde_json::to_string(c).expect("serializable");
                        comps
                            .insert(c.id, json.as_str())
                            .map_err(ManagerError::db)?;
                    }
                    Change::Vnode(v) => {
                        let json = serde_json::to_string(v).expect("serializable");
                        vnodes
                            .insert(v.id, json.as_str())
                            .map_err(ManagerError::db)?;
                    }
                    Change::DeleteVnode(id) => {
                        vnodes.remove(id).map_err(ManagerError::db)?;
                    }
                    Change::VRegion(k, a) => {
                        vregions
                            .insert((k.asid, k.index), (a.primary, a.backup.unwrap_or(0)))
                            .map_err(ManagerError::db)?;
                    }
                    Change::DeleteVRegion(k) => {
                        vregions
                            .remove((k.asid, k.index))
                            .map_err(ManagerError::db)?;
                    }
                    Change::Owner { asid, owner } => {
                        owners.insert(asid, owner).map_err(ManagerError::db)?;
                    }
                    Change::DeleteOwner(asid) => {
                        owners.remove(asid).map_err(ManagerError::db)?;
                    }
                    Change::Lease { asid, bytes } => {
                        leases.insert(asid, bytes).map_err(ManagerError::db)?;
                    }
                    Change::DeleteLease(asid) => {
                        leases.remove(asid).map_err(ManagerError::db)?;
                    }
                    Change::NextIds { component, vnode } => {
                        meta.insert("next_component_id", *component)
                            .map_err(ManagerError::db)?;
                        meta.insert("next_vnode_id", *vnode as u64)
                            .map_err(ManagerError::db)?;
                    }
                }
            }
        }
        tx.commit().map_err(ManagerError::db)
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T, ManagerError> {
    serde_json::from_str(json).map_err(|source| ManagerError::Corrupt {
        what: what.to_string(),
        source,
    })
}
