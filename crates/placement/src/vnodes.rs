//! vNodes: named virtual nodes, their mount points and quota, their
//! address-space ids, and their removal (which takes their vRegions and
//! memory leases with them).

use crate::{
    Asid, Placement, PlacementError, Record, VRegionAssignment, VRegionKey, Vnode, VnodeId,
};

/// The longest vNode name, in characters (all ASCII).
pub const MAX_VNODE_NAME: usize = 64;

/// Checks a vNode name: 1..=64 characters of `[A-Za-z0-9._-]`, not starting
/// with '.' or '-'.
pub fn validate_vnode_name(name: &str) -> Result<(), PlacementError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"
    } else if name.len() > MAX_VNODE_NAME {
        "longer than 64 characters"
    } else if name.starts_with(['.', '-']) {
        "must not start with '.' or '-'"
    } else {
        return Ok(());
    };
    Err(PlacementError::InvalidVnodeName {
        name: name.to_string(),
        reason,
    })
}

/// Most mount points a vNode may have.
pub const MAX_MOUNTS: usize = 8;

/// Checks mount points: absolute, normalised (no `.`, `..`, empty names or
/// trailing `/`), at most 256 bytes, distinct, neither nested in one another
/// nor `/` or under `/proc`, `/sys` or `/dev` (the processes need those).
pub fn validate_mounts(mounts: &[String]) -> Result<(), PlacementError> {
    let bad = |m: &str, reason: &'static str| {
        Err(PlacementError::InvalidMount {
            mount: m.to_string(),
            reason,
        })
    };
    if mounts.len() > MAX_MOUNTS {
        return bad(&mounts.join(","), "at most 8 mount points");
    }
    for (i, m) in mounts.iter().enumerate() {
        let Some(rest) = m.strip_prefix('/') else {
            return bad(m, "must be an absolute path");
        };
        if rest.is_empty() {
            return bad(m, "must not be /");
        }
        if m.len() > 256 {
            return bad(m, "longer than 256 bytes");
        }
        if rest
            .split('/')
            .any(|n| n.is_empty() || n == "." || n == ".." || n.contains('\0'))
        {
            return bad(m, "must be normalised (no '.', '..', '//' or trailing '/')");
        }
        if ["proc", "sys", "dev"].contains(&rest.split('/').next().unwrap_or("")) {
            return bad(m, "must not be under /proc, /sys or /dev");
        }
        for other in &mounts[..i] {
            if other == m
                || m.starts_with(&format!("{other}/"))
                || other.starts_with(&format!("{m}/"))
            {
                return bad(m, "mount points must be distinct and not nested");
            }
        }
    }
    Ok(())
}

impl Placement {
    /// Creates a vNode with a fresh id, the default mount point, no quota
    /// and no address spaces yet.
    pub fn create_vnode(&mut self, name: &str) -> Result<Vnode, PlacementError> {
        self.create_vnode_with(name, Vec::new(), None)
    }

    /// Creates a vNode with its mount points (none: the default) and memory
    /// quota (see [`Placement::set_host_network`] for its network).
    pub fn create_vnode_with(
        &mut self,
        name: &str,
        mounts: Vec<String>,
        memory_quota: Option<u64>,
    ) -> Result<Vnode, PlacementError> {
        validate_vnode_name(name)?;
        let mounts = if mounts.is_empty() {
            vec![crate::types::DEFAULT_MOUNT.to_string()]
        } else {
            mounts
        };
        validate_mounts(&mounts)?;
        if memory_quota == Some(0) {
            return Err(PlacementError::InvalidQuota);
        }
        if self.vnode_ids.contains_key(name) {
            return Err(PlacementError::VnodeExists(name.to_string()));
        }
        let id = self.next_vnode;
        self.next_vnode = id.checked_add(1).ok_or(PlacementError::VnodeIdsExhausted)?;
        let vnode = Vnode {
            id,
            name: name.to_string(),
            next_space: 1,
            mounts,
            memory_quota,
            storage: None,
            host_network: false,
            replicas: 2,
            network: String::new(),
        };
        self.vnode_ids.insert(vnode.name.clone(), id);
        self.vnodes.insert(id, vnode.clone());
        self.touch(Record::Vnode(id));
        self.touch(Record::NextIds);
        Ok(vnode)
    }

    /// Whether the vNode's processes share their host's network; returns the
    /// updated vNode, to be persisted.
    pub fn set_host_network(&mut self, id: VnodeId, host: bool) -> Result<Vnode, PlacementError> {
        let v = self
            .vnodes
            .get_mut(&id)
            .ok_or(PlacementError::UnknownVnodeId(id))?;
        v.host_network = host;
        let v = v.clone();
        self.touch(Record::Vnode(id));
        Ok(v)
    }

    /// The network the vNode joins (`""`: one of its own); named as vNodes
    /// are. Returns the updated vNode, to be persisted.
    pub fn set_network(&mut self, id: VnodeId, network: &str) -> Result<Vnode, PlacementError> {
        if !network.is_empty() {
            validate_vnode_name(network)?;
        }
        let v = self
            .vnodes
            .get_mut(&id)
            .ok_or(PlacementError::UnknownVnodeId(id))?;
        v.network = network.to_string();
        let v = v.clone();
        self.touch(Record::Vnode(id));
        Ok(v)
    }

    /// How many copies each new vRegion of the vNode gets (1 or 2); returns
    /// the updated vNode, to be persisted.
    pub fn set_replicas(&mut self, id: VnodeId, replicas: u8) -> Result<Vnode, PlacementError> {
        if !(1..=2).contains(&replicas) {
            return Err(PlacementError::InvalidReplicas(replicas));
        }
        let v = self
            .vnodes
            .get_mut(&id)
            .ok_or(PlacementError::UnknownVnodeId(id))?;
        v.replicas = replicas;
        let v = v.clone();
        self.touch(Record::Vnode(id));
        Ok(v)
    }

    /// The vNode with this name.
    pub fn vnode_by_name(&self, name: &str) -> Option<&Vnode> {
        self.vnode_ids.get(name).and_then(|id| self.vnodes.get(id))
    }

    /// The vNode with this id.
    pub fn vnode(&self, id: VnodeId) -> Option<&Vnode> {
        self.vnodes.get(&id)
    }

    /// All vNodes, ordered by id.
    pub fn vnodes(&self) -> impl Iterator<Item = &Vnode> {
        self.vnodes.values()
    }

    /// Removes the vNode and every vRegion, lease and owner of its address
    /// spaces; returns the vNode and its vRegions, so the manager can free
    /// them on their memory monitors.
    pub fn delete_vnode(
        &mut self,
        name: &str,
    ) -> Result<(Vnode, Vec<(VRegionKey, VRegionAssignment)>), PlacementError> {
        let unknown = || PlacementError::UnknownVnode(name.to_string());
        let id = *self.vnode_ids.get(name).ok_or_else(unknown)?;
        let vnode = self.vnodes.remove(&id).ok_or_else(unknown)?;
        self.vnode_ids.remove(name);
        self.touch(Record::Vnode(id));
        let range = Asid::range_of(id);
        let removed = self.remove_vregions(*range.start(), *range.end());
        let leased: Vec<Asid> = self.leases.range(range.clone()).map(|(&a, _)| a).collect();
        for a in leased {
            self.leases.remove(&a);
            self.touch(Record::Lease(a));
        }
        let owned: Vec<Asid> = self.owners.range(range).map(|(&a, _)| a).collect();
        for a in owned {
            self.owners.remove(&a);
            self.touch(Record::Owner(a));
        }
        Ok((vnode, removed))
    }

    /// Allocates the next address-space id of the vNode, belonging to job
    /// `owner` when given; also returns the updated vNode.
    pub fn create_space(
        &mut self,
        vnode: VnodeId,
        owner: Option<u64>,
    ) -> Result<(Asid, Vnode), PlacementError> {
        if !self.vnodes.contains_key(&vnode) {
            return Err(PlacementError::UnknownVnodeId(vnode));
        }
        if self.owners.range(Asid::range_of(vnode)).count() >= crate::MAX_SPACES_PER_VNODE {
            return Err(PlacementError::TooManySpaces {
                vnode,
                max: crate::MAX_SPACES_PER_VNODE,
            });
        }
        let record = self
            .vnodes
            .get_mut(&vnode)
            .ok_or(PlacementError::UnknownVnodeId(vnode))?;
        let seq = record.next_space.max(1);
        record.next_space = seq
            .checked_add(1)
            .ok_or(PlacementError::SpacesExhausted(vnode))?;
        let (asid, record) = (Asid::new(vnode, seq), record.clone());
        self.touch(Record::Vnode(vnode));
        self.owners.insert(asid, owner.unwrap_or(crate::NO_JOB));
        self.touch(Record::Owner(asid));
        Ok((asid, record))
    }
}
