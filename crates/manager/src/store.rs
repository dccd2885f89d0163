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

    /// The database itself, for the tables kept outside the placement
    /// records ([`crate::identity`]).
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// Every record, as [`lego_placement::Placement::restore`] takes them.
    pub fn load(&self) -> Result<Records, ManagerError> {
        let tx = self.db.begin_read().map_err(ManagerError::db)?;
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
        let tx = self.db.begin_write().map_err(ManagerError::db)?;
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

pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    what: &str,
    json: &str,
) -> Result<T, ManagerError> {
    serde_json::from_str(json).map_err(|source| ManagerError::Corrupt {
        what: what.to_string(),
        source,
    })
}
