//! Membership: components register (or rejoin under their old id), send
//! heartbeats with their load, and are declared dead when silent for longer
//! than `dead_after_ms`.

use crate::{Component, ComponentId, Event, Health, Placement, PlacementError, Record, Role};

impl Placement {
    /// A component says hello. If `previous` names a known component of the
    /// same role, that id is reused (address, capacity and instance are
    /// updated, health becomes Alive, and the event says `rejoined`);
    /// otherwise the component gets a fresh id. Queues an
    /// [`Event::ComponentRegistered`].
    pub fn register(
        &mut self,
        now_ms: u64,
        role: Role,
        addr: String,
        capacity: u64,
        instance: u64,
        previous: Option<ComponentId>,
    ) -> Result<ComponentId, PlacementError> {
        if addr.trim().is_empty() {
            return Err(PlacementError::InvalidAddress(addr));
        }
        self.end_isolation(now_ms);
        let old = previous
            .and_then(|id| self.components.get(&id))
            .filter(|old| old.role == role);
        // A memory monitor declared dead may have missed writes while it was
        // away (a partition, a stopped process): what it holds is not a
        // copy anyone may trust, and its vRegions were given to others. A
        // processor monitor declared dead had its jobs declared lost and
        // their memory freed. Either comes back as a new component.
        let stale = old
            .filter(|old| {
                matches!(old.role, Role::Memory | Role::Processor) && old.health == Health::Dead
            })
            .map(|old| old.id);
        let old = old.filter(|_| stale.is_none());
        let (id, used) = match old {
            // The same daemon reconnecting (e.g. after a manager restart)
            // still holds what it held; a restarted daemon holds nothing.
            Some(old) => (
                old.id,
                if old.instance == instance {
                    old.used
                } else {
                    0
                },
            ),
            None => {
                let id = self.next_component;
                self.next_component += 1;
                (id, 0)
            }
        };
        let rejoined = old.is_some();
        // Still being emptied after a reconnect (not after a restart: a
        // restarted memory monitor holds nothing, but the operator's word
        // stands until undrained).
        let drained = old.is_some_and(|o| o.drained);
        let drain_rate = old.and_then(|o| o.drain_rate);
        if let Some(old) = stale {
            self.events.push(Event::StaleIdentity {
                old,
                new: id,
                role,
                addr: addr.clone(),
            });
        }
        self.events.push(Event::ComponentRegistered {
            id,
            role,
            addr: addr.clone(),
            rejoined,
        });
        self.components.insert(
            id,
            Component {
                id,
                role,
                addr,
                capacity,
                used,
                instance,
                health: Health::Alive,
                last_heard_ms: now_ms,
                drained,
                drain_rate,
            },
        );
        self.reindex(id);
        self.touch(Record::Component(id));
        self.touch(Record::NextIds);
        Ok(id)
    }

    /// Records a heartbeat: the component's load and that it is alive.
    /// Refused for an unknown id, for another instance than the registered
    /// one, and for a component already marked dead (it must re-register).
    pub fn heartbeat(
        &mut self,
        now_ms: u64,
        id: ComponentId,
        instance: u64,
        used: u64,
    ) -> Result<(), PlacementError> {
        let component = self
            .components
            .get_mut(&id)
            .ok_or(PlacementError::UnknownComponent(id))?;
        if component.instance != instance {
            return Err(PlacementError::StaleInstance {
                id,
                instance,
                registered: component.instance,
            });
        }
        if component.health == Health::Dead {
            return Err(PlacementError::ComponentDead(id));
        }
        let moved = component.used != used || component.health != Health::Alive;
        component.used = used;
        component.last_heard_ms = component.last_heard_ms.max(now_ms);
        component.health = Health::Alive;
        if moved {
            self.reindex(id);
        }
        self.end_isolation(now_ms);
        Ok(())
    }

    /// The longest the manager normally goes without hearing anyone: each
    /// component beats at least twice per dead interval, at its own phase.
    fn blind_after(&self) -> u64 {
        self.config.dead_after_ms / 2
    }

    /// Forgives every live component the silence of a `gap` in which the
    /// manager could not hear anyone (cut off or paused). A short gap (the
    /// jitter of a late heartbeat) is forgiven past the normal only, so a
    /// dead component's silence still grows; after a real blackout (longer
    /// than the dead interval) everyone gets the grace a restarted manager
    /// gives: two intervals from now to be heard again, time for agents to
    /// reconnect.
    fn forgive(&mut self, gap: u64, now_ms: u64) {
        let dead_after = self.config.dead_after_ms;
        let blind = self.blind_after();
        for c in self.components.values_mut() {
            if c.health != Health::Dead {
                c.last_heard_ms = if gap > dead_after {
                    now_ms + dead_after
                } else {
                    c.last_heard_ms
                        .saturating_add(gap.saturating_sub(blind))
                        .min(now_ms)
                };
            }
        }
    }

    /// The first word from a component after [`Event::Isolated`]: the
    /// silence past what is normal ([`Self::blind_after`]) since the manager
    /// last heard anyone is forgiven every live component, and nothing more.
    fn end_isolation(&mut self, now_ms: u64) {
        if let Some(since) = self.isolated_since.take() {
            let gap = now_ms.saturating_sub(since);
            self.forgive(gap, now_ms);
            self.events.push(Event::Reconnected { after_ms: gap });
        }
    }

    /// Marks dead every component (alive or unknown) silent for more than
    /// `dead_after_ms`. Each death is reported once: the events are both
    /// returned and queued for [`Placement::take_events`].
    ///
    /// With [`PlacementConfig::isolation_guard`], first: a gap since the
    /// last tick longer than [`Self::blind_after`] is the manager paused,
    /// and forgiven every component past that; and no component at all
    /// heard for that long is the manager cut off: declaring them dead one
    /// by one would free every job's memory and drop every copy, so it
    /// declares none until one is heard ([`Self::end_isolation`]).
    pub fn tick(&mut self, now_ms: u64) -> Vec<Event> {
        let dead_after_ms = self.config.dead_after_ms;
        let mut events = Vec::new();
        if self.config.isolation_guard {
            let blind = self.blind_after();
            if let Some(prev) = self.last_tick.replace(now_ms) {
                let gap = now_ms.saturating_sub(prev);
                if gap > blind {
                    self.forgive(gap, now_ms);
                    self.events.push(Event::Reconnected { after_ms: gap });
                }
            }
            let last_any = self
                .components
                .values()
                .filter(|c| c.health != Health::Dead)
                .map(|c| c.last_heard_ms)
                .max();
            if let Some(last) = last_any.filter(|&l| now_ms.saturating_sub(l) > blind) {
                if self.isolated_since.is_none() {
                    self.isolated_since = Some(last);
                    let live = self
                        .components
                        .values()
                        .filter(|c| c.health != Health::Dead)
                        .count();
                    let e = Event::Isolated { components: live };
                    self.events.push(e.clone());
                    events.push(e);
                }
                return events;
            }
        }
        for component in self.components.values_mut() {
            let silent_ms = now_ms.saturating_sub(component.last_heard_ms);
            if component.health != Health::Dead && silent_ms > dead_after_ms {
                component.health = Health::Dead;
                self.dirty.insert(Record::Component(component.id));
                events.push(Event::ComponentDead {
                    id: component.id,
                    role: component.role,
                    addr: component.addr.clone(),
                    silent_ms,
                });
            }
        }
        self.events.extend(events.iter().cloned());
        for e in &events {
            if let Event::ComponentDead { id, .. } = e {
                self.reindex(*id);
            }
        }
        for e in &events {
            if let Event::ComponentDead {
                id,
                role: Role::Memory,
                ..
            } = e
            {
                self.fail_over(*id);
            }
        }
        events
    }

    /// Declares a component dead now, whatever its heartbeats say (the
    /// manager found it unreachable when a process reported it). Returns
    /// the death event, also queued, or `None` if it was already dead.
    pub fn declare_dead(&mut self, now_ms: u64, id: ComponentId) -> Option<Event> {
        let c = self.components.get_mut(&id)?;
        if c.health == Health::Dead {
            return None;
        }
        c.health = Health::Dead;
        self.dirty.insert(Record::Component(id));
        let e = Event::ComponentDead {
            id,
            role: c.role,
            addr: c.addr.clone(),
            silent_ms: now_ms.saturating_sub(c.last_heard_ms),
        };
        let memory = c.role == Role::Memory;
        self.events.push(e.clone());
        self.reindex(id);
        if memory {
            self.fail_over(id);
        }
        Some(e)
    }

    /// The component with this id, whatever its health.
    pub fn component(&self, id: ComponentId) -> Option<&Component> {
        self.components.get(&id)
    }

    /// All components, dead ones included, ordered by id.
    pub fn components(&self) -> impl Iterator<Item = &Component> {
        self.components.values()
    }
}
