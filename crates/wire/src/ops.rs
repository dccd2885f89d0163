//! Operation codes and error codes: the closed vocabulary of the protocol.

use crate::WireError;

macro_rules! u16_enum {
    ($(#[$m:meta])* pub enum $name:ident : $err:ident { $($(#[$vm:meta])* $var:ident = $val:expr, $text:literal;)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum $name { $($(#[$vm])* $var = $val,)* }

        impl TryFrom<u16> for $name {
            type Error = WireError;
            fn try_from(v: u16) -> Result<Self, WireError> {
                match v {
                    $($val => Ok($name::$var),)*
                    other => Err(WireError::$err(other)),
                }
            }
        }

        impl $name {
            /// Every value, for tests and tables.
            pub const ALL: &'static [$name] = &[$($name::$var,)*];
            /// A short lower-case name for logs and metrics.
            pub fn name(self) -> &'static str {
                match self { $($name::$var => $text,)* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

u16_enum! {
    /// What a frame asks for. Responses carry the op of their request.
    pub enum Op: UnknownOp {
        /// Handshake, server to client: a fresh nonce.
        Challenge = 0x0001, "challenge";
        /// Handshake, client to server: the claim and its proof.
        Hello = 0x0002, "hello";
        /// Handshake, server to client: the server's proof.
        Welcome = 0x0003, "welcome";
        /// Empty request, empty response.
        Ping = 0x0010, "ping";
        /// Memory monitor: read a batch of pages.
        ReadPages = 0x0100, "read_pages";
        /// Memory monitor: write a batch of pages.
        WritePages = 0x0101, "write_pages";
        /// Memory monitor: free a range of pages.
        FreeRange = 0x0102, "free_range";
        /// Memory monitor: free a whole address space.
        FreeSpace = 0x0103, "free_space";
        /// Memory monitor: counters as JSON.
        MemStats = 0x0104, "mem_stats";
        /// Memory monitor: copy every page of one address space into another (fork).
        CloneSpace = 0x0105, "clone_space";
        /// Memory monitor, between monitors: pages with their versions
        /// (a vRegion's copy being rebuilt, or a write forwarded to it).
        CopyPages = 0x0106, "copy_pages";
        /// Memory monitor, from the manager: vRegions of an address space
        /// placed on it; a vNode's writes go only to granted vRegions.
        GrantVRegions = 0x0108, "grant_vregions";
        /// Memory monitor, from the manager: a vNode was deleted; free every
        /// page and grant of it.
        FreeVnode = 0x0109, "free_vnode";
        /// Memory monitor, from the manager: rebuild the copy of a vRegion
        /// on another memory monitor, forwarding later writes to it.
        Replicate = 0x0107, "replicate";
        /// Memory monitor, from the manager: a vRegion's copy moved away;
        /// refuse its writes, free its pages.
        Withdraw = 0x010a, "withdraw";
        /// Memory monitor, between monitors: this connection carries bulk
        /// copies; serve it below the programs' requests (empty body).
        Background = 0x010b, "background";
        /// Memory monitor, between monitors: the versions of the pages it
        /// holds in a range (a move's old copy handing over what is newer).
        PageVersions = 0x010c, "page_versions";
        /// Manager: a component registers.
        Register = 0x0200, "register";
        /// Manager: a component is alive and reports its load.
        Heartbeat = 0x0201, "heartbeat";
        /// Manager (GMM): where does this vRegion live?
        AssignVRegion = 0x0202, "assign_vregion";
        /// Manager: allocate a new address space id for a vNode.
        CreateSpace = 0x0203, "create_space";
        /// Manager: an address space is gone; free its pages everywhere.
        ReleaseSpace = 0x0204, "release_space";
        /// Manager: the address space of a forked child, a copy of its parent's.
        ForkSpace = 0x0205, "fork_space";
        /// Manager: free every address space created for one owner (a job).
        ReleaseOwner = 0x0206, "release_owner";
        /// Manager (GPM): which processor monitor runs a new process?
        PlaceProcess = 0x0207, "place_process";
        /// Manager: create a vNode.
        VnodeCreate = 0x0210, "vnode_create";
        /// Manager: list vNodes.
        VnodeList = 0x0211, "vnode_list";
        /// Manager: delete a vNode.
        VnodeDelete = 0x0212, "vnode_delete";
        /// Manager: one vNode in detail.
        VnodeShow = 0x0213, "vnode_show";
        /// Manager (GSM): a vNode's details with its storage monitor, placed
        /// now if it had none (for a processor monitor about to mount it).
        VnodeMount = 0x0214, "vnode_mount";
        /// Manager: lease memory to an address space within its vNode's quota.
        LeaseMemory = 0x0208, "lease_memory";
        /// Manager: a process could not reach a memory monitor.
        ReportUnreachable = 0x0209, "report_unreachable";
        /// Manager: a copy of a vRegion missed a write of this process.
        ReportMissed = 0x020a, "report_missed";
        /// Manager: the whole cluster state.
        ClusterState = 0x0220, "cluster_state";
        /// Manager: where each vNode's vIP is served, for the routes of
        /// every host ([`crate::control::VipRoutes`]).
        VipRoutes = 0x0221, "vip_routes";
        /// Manager (operator): a one-time join token.
        TokenCreate = 0x0230, "token_create";
        /// Manager: a daemon with a join token becomes a member.
        Join = 0x0231, "join";
        /// Manager: the key that proves the caller to a member.
        PeerKey = 0x0232, "peer_key";
        /// Manager: a job's vNode key and proof, for a processor member.
        JobKeys = 0x0233, "job_keys";
        /// Manager (operator): revoke a member's key.
        Revoke = 0x0234, "revoke";
        /// Manager (operator): every member.
        Members = 0x0235, "members";
        /// Manager (operator): drain a memory monitor, or undrain it.
        Drain = 0x0240, "drain";
        /// Manager (operator): even out the memory monitors' use.
        Rebalance = 0x0241, "rebalance";
        /// Processor monitor: start a program.
        Launch = 0x0300, "launch";
        /// Processor monitor: output and exit of a job (long poll).
        Output = 0x0301, "output";
        /// Processor monitor: bytes for a job's stdin (empty: end of input).
        Stdin = 0x0302, "stdin";
        /// Processor monitor: send a signal to a job.
        Signal = 0x0303, "signal";
        /// Processor monitor: the jobs running and their counters.
        Jobs = 0x0304, "jobs";
        /// Storage monitor: one file operation of a vNode ([`crate::fs`]).
        Fs = 0x0400, "fs";
    }
}

u16_enum! {
    /// Why a request was refused.
    pub enum ErrorCode: UnknownErrorCode {
        /// The frame could not be decoded; the connection is closed.
        BadFrame = 1, "bad frame";
        /// The handshake failed: wrong secret or bad proof.
        AuthFailed = 2, "authentication failed";
        /// The body of a well-framed request is malformed or inconsistent.
        BadRequest = 3, "bad request";
        /// The operation is not served by this component.
        UnknownOp = 4, "unknown operation";
        /// The connection is not entitled to the address space or object.
        NotEntitled = 5, "not entitled";
        /// The memory monitor's capacity is exhausted.
        OutOfMemory = 6, "out of memory";
        /// No such object.
        NotFound = 7, "not found";
        /// The object already exists or the state forbids the operation.
        Conflict = 8, "conflict";
        /// Not enough live components to satisfy the request.
        Unavailable = 9, "unavailable";
        /// The frame is larger than the maximum.
        TooLarge = 10, "too large";
        /// A bug or an I/O failure inside the component.
        Internal = 11, "internal error";
    }
}

const _: () = assert!(std::mem::size_of::<Op>() == 2);
const _: () = assert!(std::mem::size_of::<ErrorCode>() == 2);
