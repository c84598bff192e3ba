//! What one connection, one key, and all keys without an account together may hold on a
//! peer, so that no stranger starves the chain's members.
//!
//! Every caller is put in a [`Class`] by its key: the hosts of the chain's validators
//! (consensus: `Raft`, `Endorse`, forwarded submissions), members (keys with an account on
//! chain: departments, operators, storage nodes, validators) and strangers (keys with no
//! account: citizens, and anyone who made up a key). Each class takes its request slots from
//! its own pool, so strangers, however many, hold at most `stranger_requests` slots and
//! `stranger_connections` connections, and never a slot of the members' pool or of
//! consensus. Within a class, one key holds at most `connections_per_identity` connections
//! and `requests_per_identity` slots; one connection at most `streams_per_connection`
//! requests, counted from the stream's first byte (the slot itself only once its whole
//! header arrived, within `header_timeout`: see the parent module).
//!
//! Refusals are rate-limited per key (and for strangers also all together): a key whose
//! refusals exceed [`PeerLimits::refusals_per_second`] is answered `Busy` without asking
//! the chain, so a flood of refused requests costs the peer no chain query. Keys the peer
//! has not met are looked up on chain at most [`PeerLimits::lookups_per_second`] times a
//! second; past that they count as strangers until a lookup says otherwise.
//!
//! Not for: deciding what a key may do (`access`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::PeerLimits;
use crate::access::ChainView;
use crate::chain::ledger::Ledger;
use crate::identity::PublicId;

/// Most keys whose refusals are counted one by one; past it only the strangers' shared
/// count holds for keys met since (the map is never emptied by new keys).
const MAX_COUNTED: usize = 4096;

/// Who a caller is, for the budget its requests come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// The host of one of the chain's validators (on a validator's peer).
    Host,
    /// A key with an account on chain.
    Member,
    /// A key with no account on chain (or not looked up, under a flood of new keys).
    Stranger,
}

/// A token bucket: `rate` a second, at most `burst` saved.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            tokens: rate,
            at: Instant::now(),
            rate,
            burst: rate,
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
    }

    /// Whether a token is there, without taking it.
    fn has(&mut self) -> bool {
        self.refill();
        self.tokens >= 1.0
    }

    /// Takes a token if there is one.
    fn take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes a token, going into debt if there is none (at most one burst deep).
    fn spend(&mut self) {
        self.refill();
        self.tokens = (self.tokens - 1.0).max(-self.burst);
    }

    fn full(&mut self) -> bool {
        self.refill();
        self.tokens >= self.burst
    }
}

/// Connections and requests one key holds now.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    connections: usize,
    requests: usize,
}

/// Why a connection or a request was not admitted: the message sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal(pub String);

/// The peer's budgets (see the module docs).
pub(super) struct Gate {
    limits: PeerLimits,
    members: Arc<Semaphore>,
    strangers: Arc<Semaphore>,
    consensus: Arc<Semaphore>,
    stranger_connections: Arc<Semaphore>,
    held: Mutex<HashMap<PublicId, Held>>,
    refusals: Mutex<HashMap<PublicId, Bucket>>,
    stranger_refusals: Mutex<Bucket>,
    lookups: Mutex<Bucket>,
}

/// A connection admitted: released when dropped.
pub(super) struct ConnectionPass {
    gate: Arc<Gate>,
    who: PublicId,
    _stranger: Option<OwnedSemaphorePermit>,
}

impl Drop for ConnectionPass {
    fn drop(&mut self) {
        self.gate.release(&self.who, |h| &mut h.connections);
    }
}

/// A request slot: released when dropped.
pub(super) struct Slot {
    gate: Arc<Gate>,
    who: PublicId,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release(&self.who, |h| &mut h.requests);
    }
}

impl Gate {
    pub(super) fn new(limits: &PeerLimits) -> Arc<Self> {
        Arc::new(Self {
            members: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            strangers: Arc::new(Semaphore::new(limits.stranger_requests)),
            consensus: Arc::new(Semaphore::new(limits.consensus_requests)),
            stranger_connections: Arc::new(Semaphore::new(limits.stranger_connections)),
            held: Mutex::new(HashMap::new()),
            refusals: Mutex::new(HashMap::new()),
            stranger_refusals: Mutex::new(Bucket::new(limits.stranger_refusals_per_second)),
            lookups: Mutex::new(Bucket::new(limits.lookups_per_second)),
            limits: limits.clone(),
        })
    }

    /// `who`'s class: a validator's host, a key known to hold an account, a key whose
    /// absence of account is cached, or (while lookups of new keys are within their rate)
    /// what the chain says, a stranger if it cannot say within `within`.
    pub(super) async fn classify(
        &self,
        who: &PublicId,
        ledger: Option<&Arc<Ledger>>,
        access: &ChainView,
        within: Duration,
    ) -> Class {
        if ledger.is_some_and(|l| l.is_validator_host(who)) {
            return Class::Host;
        }
        if access.known_member(who) {
            return Class::Member;
        }
        if access.known_stranger(who) || !lock(&self.lookups).take() {
            return Class::Stranger;
        }
        match tokio::time::timeout(within, access.role(who, false)).await {
            Ok(Ok(Some(_))) => Class::Member,
            _ => Class::Stranger,
        }
    }

    /// Admits a connection of `who` (of `class`), or says why not.
    pub(super) fn connect(
        self: &Arc<Self>,
        who: &PublicId,
        class: Class,
    ) -> Result<ConnectionPass, Refusal> {
        let stranger = match class {
            Class::Stranger => Some(
                self.stranger_connections
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| {
                        Refusal(format!(
                            "keys without an account hold {} connections to this peer already",
                            self.limits.stranger_connections
                        ))
                    })?,
            ),
            Class::Host | Class::Member => None,
        };
        self.hold(
            who,
            self.limits.connections_per_identity,
            "connections",
            |h| &mut h.connections,
        )?;
        Ok(ConnectionPass {
            gate: self.clone(),
            who: *who,
            _stranger: stranger,
        })
    }

    /// A request slot for `who` (of `class`), waiting up to `queue_timeout` for one of its
    /// class's pool; `Err` (answered `Busy`) when `who` holds its share already or the pool
    /// stays full.
    pub(super) async fn slot(
        self: &Arc<Self>,
        who: &PublicId,
        class: Class,
    ) -> Result<Slot, Refusal> {
        let pool = match class {
            Class::Host => &self.consensus,
            Class::Member => &self.members,
            Class::Stranger => &self.strangers,
        };
        self.hold(who, self.limits.requests_per_identity, "requests", |h| {
            &mut h.requests
        })?;
        match tokio::time::timeout(self.limits.queue_timeout, pool.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot {
                gate: self.clone(),
                who: *who,
                _permit: permit,
            }),
            _ => {
                self.release(who, |h| &mut h.requests);
                Err(Refusal(match class {
                    Class::Stranger => {
                        "peer is busy with requests of keys without an account".into()
                    }
                    Class::Host | Class::Member => "peer is busy".into(),
                }))
            }
        }
    }

    /// Whether `who` may be refused once more now (its refusals, and the strangers', within
    /// their rate); if not, it is answered `Busy` without being authorised.
    pub(super) fn may_be_refused(&self, who: &PublicId, class: Class) -> bool {
        if class == Class::Stranger && !lock(&self.stranger_refusals).has() {
            return false;
        }
        lock(&self.refusals).get_mut(who).is_none_or(Bucket::has)
    }

    /// Counts a refusal of `who`.
    pub(super) fn refused(&self, who: &PublicId, class: Class) {
        if class == Class::Stranger {
            lock(&self.stranger_refusals).spend();
        }
        let mut counted = lock(&self.refusals);
        if !counted.contains_key(who) && counted.len() >= MAX_COUNTED {
            counted.retain(|_, b| !b.full());
        }
        if let Some(bucket) = counted.get_mut(who) {
            bucket.spend();
        } else if counted.len() < MAX_COUNTED {
            let mut bucket = Bucket::new(self.limits.refusals_per_second);
            bucket.spend();
            counted.insert(*who, bucket);
        }
    }

    fn hold(
        &self,
        who: &PublicId,
        max: usize,
        what: &str,
        field: impl Fn(&mut Held) -> &mut usize,
    ) -> Result<(), Refusal> {
        let mut held = lock(&self.held);
        let count = field(held.entry(*who).or_default());
        if *count >= max {
            return Err(Refusal(format!(
                "{} holds {max} {what} on this peer already",
                who.short()
            )));
        }
        *count += 1;
        Ok(())
    }

    fn release(&self, who: &PublicId, field: impl Fn(&mut Held) -> &mut usize) {
        let mut held = lock(&self.held);
        if let Some(h) = held.get_mut(who) {
            let count = field(h);
            *count = count.saturating_sub(1);
            if h.connections == 0 && h.requests == 0 {
                held.remove(who);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, Role};

    fn limits() -> PeerLimits {
        PeerLimits {
            connections_per_identity: 2,
            requests_per_identity: 2,
            stranger_connections: 3,
            stranger_requests: 1,
            queue_timeout: Duration::ZERO,
            refusals_per_second: 3,
            stranger_refusals_per_second: 5,
            ..PeerLimits::default()
        }
    }

    #[tokio::test]
    async fn a_key_holds_its_share_and_strangers_theirs_together() {
        let gate = Gate::new(&limits());
        let member = Identity::generate(Role::Department).public();
        let a = gate.connect(&member, Class::Member).unwrap();
        let _b = gate.connect(&member, Class::Member).unwrap();
        assert!(
            gate.connect(&member, Class::Member).is_err(),
            "third connection"
        );
        drop(a);
        let _c = gate.connect(&member, Class::Member).unwrap();

        let strangers: Vec<PublicId> = (0..4)
            .map(|_| Identity::generate(Role::Citizen).public())
            .collect();
        let held: Vec<_> = strangers[..3]
            .iter()
            .map(|s| gate.connect(s, Class::Stranger).unwrap())
            .collect();
        assert!(gate.connect(&strangers[3], Class::Stranger).is_err());
        drop(held);
        let _d = gate.connect(&strangers[3], Class::Stranger).unwrap();

        // One stranger slot for all strangers; members' slots are elsewhere.
        let s = gate.slot(&strangers[0], Class::Stranger).await.unwrap();
        assert!(gate.slot(&strangers[1], Class::Stranger).await.is_err());
        let m1 = gate.slot(&member, Class::Member).await.unwrap();
        let _m2 = gate.slot(&member, Class::Member).await.unwrap();
        assert!(gate.slot(&member, Class::Member).await.is_err(), "per key");
        drop((s, m1));
        let _s = gate.slot(&strangers[1], Class::Stranger).await.unwrap();
        let _m = gate.slot(&member, Class::Member).await.unwrap();
        assert_eq!(
            lock(&gate.held).get(&strangers[0]).map(|h| h.requests),
            None
        );
    }

    #[test]
    fn refusals_are_limited_per_key_and_for_strangers_together() {
        let gate = Gate::new(&limits());
        let member = Identity::generate(Role::Department).public();
        for _ in 0..3 {
            assert!(gate.may_be_refused(&member, Class::Member));
            gate.refused(&member, Class::Member);
        }
        assert!(!gate.may_be_refused(&member, Class::Member));
        // Another key is not held back by it.
        let other = Identity::generate(Role::Department).public();
        assert!(gate.may_be_refused(&other, Class::Member));
        // Strangers share one budget: fresh keys do not get fresh refusals past it.
        for _ in 0..5 {
            let fresh = Identity::generate(Role::Citizen).public();
            assert!(gate.may_be_refused(&fresh, Class::Stranger));
            gate.refused(&fresh, Class::Stranger);
        }
        let fresh = Identity::generate(Role::Citizen).public();
        assert!(!gate.may_be_refused(&fresh, Class::Stranger));
        assert!(gate.may_be_refused(&other, Class::Member));
    }
}
