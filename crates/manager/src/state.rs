//! The manager's state in one place: the placement state machine (which
//! holds everything durable) and its store, behind one lock. Every change
//! goes through [`State::change`], which writes the records it touched to
//! the store before anyone can be answered, and hands back the events the
//! manager must act on.

use std::sync::Mutex;
use std::time::Instant;

use lego_placement::{Event, Placement, PlacementError};
use lego_transport::{lock, Reject};
use lego_wire::ErrorCode;
use tracing::warn;

use crate::store::Db;

/// The placement state machine and its store.
pub struct State {
    placement: Mutex<Placement>,
    db: Db,
    started: Instant,
}

/// A refusal for a placement error, with the protocol's code for it.
pub fn reject(e: PlacementError) -> Reject {
    use PlacementError as P;
    let code = match &e {
        P::NotEnoughMemoryMonitors { .. }
        | P::NoSpareMemoryMonitor(_)
        | P::NoProcessor { .. }
        | P::NoStorage(_)
        | P::StorageDown { .. } => ErrorCode::Unavailable,
        P::QuotaExceeded { .. } => ErrorCode::OutOfMemory,
        P::UnknownComponent(_) | P::UnknownVnode(_) | P::UnknownVnodeId(_) | P::UnknownSpace(_) => {
            ErrorCode::NotFound
        }
        P::TooManySpaces { .. } | P::TooManyVRegions { .. } => ErrorCode::Conflict,
        P::VnodeExists(_) | P::StaleInstance { .. } | P::ComponentDead(_) => ErrorCode::Conflict,
        _ => ErrorCode::BadRequest,
    };
    Reject::new(code, e.to_string())
}

impl State {
    pub fn new(placement: Placement, db: Db) -> State {
        State {
            placement: Mutex::new(placement),
            db,
            started: Instant::now(),
        }
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// Milliseconds since this manager started: the state machine's clock.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Reads the state.
    pub fn read<R>(&self, f: impl FnOnce(&Placement) -> R) -> R {
        f(&lock(&self.placement))
    }

    /// Changes the state with `f` (given the clock), makes every record it
    /// touched durable, and returns `f`'s answer with the events to act on.
    /// A change the store refuses is answered `Internal` (the state in
    /// memory keeps it, and the next change of the same records writes it).
    pub fn change<R>(
        &self,
        f: impl FnOnce(&mut Placement, u64) -> Result<R, PlacementError>,
    ) -> (Result<R, Reject>, Vec<Event>) {
        let now = self.now_ms();
        let mut st = lock(&self.placement);
        let answer = f(&mut st, now).map_err(reject);
        let changes = st.take_changes();
        let stored = self.db.apply(&changes);
        let events = st.take_events();
        drop(st);
        let answer = match stored {
            Ok(()) => answer,
            // Another manager leads (fenced by etcd): acting on would be
            // split brain. Nothing is answered; clients go to the leader.
            Err(crate::ManagerError::Deposed) => {
                tracing::error!("etcd refused a write: another manager leads; this one stops now");
                std::process::exit(3);
            }
            Err(e) => {
                warn!("cannot make a change durable: {e}");
                Err(Reject::new(
                    ErrorCode::Internal,
                    format!("the manager cannot store the change: {e}"),
                ))
            }
        };
        (answer, events)
    }
}
