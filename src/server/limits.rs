//! Admission control: how many places the server holds at once, in all and
//! per client address, and who may take one.
//!
//! A place is held by a TCP connection and by a polling session. It starts
//! *unjoined* (the client has not yet joined a Socket.IO namespace: TLS, the
//! request head, a websocket or polling session before its CONNECT) and
//! becomes *joined* when its client joins. The two kinds have separate caps
//! per address. Unjoined places cost nothing to open, so they must not be a
//! way to lock anyone out: when an address (or the whole server) has no room
//! for a newcomer, the oldest unjoined place of that address (or anywhere)
//! is taken back and its holder closed. A client that only opens handshakes
//! thus churns through its own unjoined places, while a legitimate client of
//! the same address joins within its round trips. Joined places are never
//! taken back: past their cap a CONNECT is refused.
//!
//! IPv6 clients are counted per prefix (a /64 by default): one subscriber
//! holds a whole /64, and counting each of its addresses apart would give
//! it unlimited places.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::Notify;

use super::refusals::REFUSALS;
use crate::metrics::ConnectionRefusal;

/// The connection limits of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Places held at once, in all.
    pub total: usize,
    /// Joined places held at once by one address.
    pub joined_per_address: usize,
    /// Unjoined places held at once by one address; a newcomer past it takes
    /// the address's oldest unjoined place.
    pub unjoined_per_address: usize,
    /// How many leading bits of an IPv6 address name one client (64: a /64).
    pub ipv6_prefix_len: u8,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            total: 10_000,
            joined_per_address: 256,
            unjoined_per_address: 64,
            ipv6_prefix_len: 64,
        }
    }
}

/// What the limits count one client under: an IPv4 address, or an IPv6
/// address cut to the configured prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    /// The key of `ip` (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn new(ip: IpAddr, ipv6_prefix_len: u8) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u32::from(ipv6_prefix_len.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                AddressKey(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
            }
            v4 => AddressKey(v4),
        }
    }
}

impl fmt::Display for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Counts places; hands out a [`Place`] per admitted holder.
#[derive(Debug)]
pub struct Gate {
    limits: ConnectionLimits,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    total: usize,
    next_serial: u64,
    by_address: HashMap<AddressKey, Counts>,
    /// Every unjoined place, oldest first: what a newcomer may take back
    /// when the server is full.
    unjoined: BTreeMap<u64, (Option<AddressKey>, Weak<Place>)>,
}

#[derive(Debug, Default)]
struct Counts {
    joined: usize,
    /// Serials of the address's unjoined places, oldest first.
    unjoined: VecDeque<u64>,
}

/// Why a client was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every place is taken by a joined client.
    #[error("the server is at its connection limit")]
    Total,
    /// The address holds its maximum of joined connections.
    #[error("this address is at its connection limit")]
    PerAddress,
}

const UNJOINED: u8 = 0;
const JOINED: u8 = 1;
const TAKEN_BACK: u8 = 2;

/// One admitted holder's place: freed when the last reference is dropped;
/// [`Place::taken_back`] resolves if the gate gives it to a newcomer first.
#[derive(Debug)]
pub struct Place {
    gate: Arc<Gate>,
    /// `None`: a connection from a trusted proxy, counted in the total only
    /// (the clients behind it get places of their own per request).
    key: Option<AddressKey>,
    /// Its position among the unjoined places (higher is newer); changed
    /// under the gate's lock.
    serial: AtomicU64,
    /// UNJOINED, JOINED or TAKEN_BACK; changed under the gate's lock.
    state: AtomicU8,
    taken_back: Notify,
}

impl Gate {
    /// A gate enforcing `limits`.
    pub fn new(limits: ConnectionLimits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            state: Mutex::default(),
        })
    }

    /// The limits this gate enforces.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    fn state(&self) -> MutexGuard<'_, GateState> {
        // Every update is a few counter changes no panic can interrupt.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The key `ip` is counted under.
    pub fn key(&self, ip: IpAddr) -> AddressKey {
        AddressKey::new(ip, self.limits.ipv6_prefix_len)
    }

    /// An unjoined place for a client at `ip`. When the address has its
    /// maximum of unjoined places, its oldest is taken back; when the server
    /// is full, the oldest unjoined place anywhere is. Refused only when
    /// every place is joined.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Arc<Place>, Refused> {
        self.admit_as(Some(self.key(ip)))
    }

    /// An unjoined place for a connection from a trusted proxy: counted in
    /// the total, not against the proxy's address.
    pub fn admit_proxy(self: &Arc<Self>) -> Result<Arc<Place>, Refused> {
        self.admit_as(None)
    }

    fn admit_as(self: &Arc<Self>, key: Option<AddressKey>) -> Result<Arc<Place>, Refused> {
        let mut state = self.state();
        if let Some(key) = key {
            let full = state.by_address.get(&key).is_some_and(|counts| {
                counts.unjoined.len() >= self.limits.unjoined_per_address.max(1)
            });
            if full {
                let oldest = state.by_address.get(&key).and_then(|c| c.unjoined.front());
                if let Some(&oldest) = oldest {
                    state.take_back(oldest);
                }
            }
        }
        if state.total >= self.limits.total {
            match state.unjoined.keys().next() {
                Some(&oldest) => state.take_back(oldest),
                None => {
                    REFUSALS.count(ConnectionRefusal::Total);
                    return Err(Refused::Total);
                }
            }
        }
        let serial = state.new_serial();
        state.total += 1;
        let place = Arc::new(Place {
            gate: self.clone(),
            key,
            serial: AtomicU64::new(serial),
            state: AtomicU8::new(UNJOINED),
            taken_back: Notify::new(),
        });
        state.unjoined.insert(serial, (key, Arc::downgrade(&place)));
        if let Some(key) = key {
            state
                .by_address
                .entry(key)
                .or_default()
                .unjoined
                .push_back(serial);
        }
        Ok(place)
    }

    /// Places held now, joined or not.
    pub fn open(&self) -> usize {
        self.state().total
    }
}

impl GateState {
    fn new_serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    /// Takes the unjoined place `serial` back: it no longer counts, and its
    /// holder is told to close.
    fn take_back(&mut self, serial: u64) {
        let Some((key, place)) = self.unjoined.remove(&serial) else {
            return;
        };
        self.total -= 1;
        if let Some(key) = key {
            self.forget_unjoined(key, serial);
        }
        // A place being dropped right now finds itself gone from the map
        // and leaves the counts alone.
        if let Some(place) = place.upgrade() {
            place.state.store(TAKEN_BACK, Ordering::Release);
            place.taken_back.notify_waiters();
        }
        REFUSALS.count(ConnectionRefusal::TakenBack);
    }

    fn forget_unjoined(&mut self, key: AddressKey, serial: u64) {
        if let Some(counts) = self.by_address.get_mut(&key) {
            if let Some(at) = counts.unjoined.iter().position(|s| *s == serial) {
                counts.unjoined.remove(at);
            }
            self.forget_if_empty(key);
        }
    }

    fn forget_if_empty(&mut self, key: AddressKey) {
        let Some(counts) = self.by_address.get_mut(&key) else {
            return;
        };
        if counts.unjoined.is_empty() {
            if counts.joined == 0 {
                self.by_address.remove(&key);
            } else {
                // Most addresses hold joined places only: no queue memory.
                counts.unjoined = VecDeque::new();
            }
        }
    }
}

impl Place {
    /// The client joined: the place moves to its address's joined places.
    /// False (and the place stays unjoined) when the address has no joined
    /// place left. True if it had joined already.
    pub fn join(&self) -> bool {
        let mut state = self.gate.state();
        match self.state.load(Ordering::Acquire) {
            JOINED => return true,
            TAKEN_BACK => return false,
            _ => {}
        }
        if let Some(key) = self.key {
            let counts = state.by_address.entry(key).or_default();
            if counts.joined >= self.gate.limits.joined_per_address {
                drop(state);
                REFUSALS.count(ConnectionRefusal::PerAddress);
                return false;
            }
            counts.joined += 1;
            state.forget_unjoined(key, self.serial());
        }
        state.unjoined.remove(&self.serial());
        self.state.store(JOINED, Ordering::Release);
        true
    }

    /// The client is active (a request came): an unjoined place becomes the
    /// newest of its address, the last a newcomer takes back.
    pub fn touch(self: &Arc<Self>) {
        if self.state.load(Ordering::Acquire) != UNJOINED {
            return;
        }
        let mut state = self.gate.state();
        let old = self.serial();
        if state.unjoined.remove(&old).is_none() {
            return; // taken back or joined meanwhile
        }
        let new = state.new_serial();
        self.serial.store(new, Ordering::Release);
        state.unjoined.insert(new, (self.key, Arc::downgrade(self)));
        if let Some(counts) = self.key.and_then(|key| state.by_address.get_mut(&key)) {
            counts.unjoined.retain(|serial| *serial != old);
            counts.unjoined.push_back(new);
        }
    }

    fn serial(&self) -> u64 {
        self.serial.load(Ordering::Acquire)
    }

    /// Undoes [`join`](Self::join): the client was refused after all (a bad
    /// token). The place is unjoined again, as the newest of its address.
    pub fn unjoin(self: &Arc<Self>) {
        let mut state = self.gate.state();
        if self.state.load(Ordering::Acquire) != JOINED {
            return;
        }
        let serial = state.new_serial();
        self.serial.store(serial, Ordering::Release);
        if let Some(key) = self.key {
            let counts = state.by_address.entry(key).or_default();
            counts.joined -= 1;
            counts.unjoined.push_back(serial);
        }
        state
            .unjoined
            .insert(serial, (self.key, Arc::downgrade(self)));
        self.state.store(UNJOINED, Ordering::Release);
    }

    /// True once the client joined.
    pub fn is_joined(&self) -> bool {
        self.state.load(Ordering::Acquire) == JOINED
    }

    /// Resolves once the gate has given this place to a newcomer; never
    /// for a joined place.
    pub async fn taken_back(&self) {
        loop {
            let notified = self.taken_back.notified();
            tokio::pin!(notified);
            // Registered before the check, so a take-back right after it
            // wakes us.
            notified.as_mut().enable();
            if self.state.load(Ordering::Acquire) == TAKEN_BACK {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut state = self.gate.state();
        match self.state.load(Ordering::Acquire) {
            TAKEN_BACK => return,
            JOINED => {
                if let Some(key) = self.key
                    && let Some(counts) = state.by_address.get_mut(&key)
                {
                    counts.joined -= 1;
                    state.forget_if_empty(key);
                }
            }
            _ => {
                let serial = self.serial();
                if state.unjoined.remove(&serial).is_none() {
                    // Taken back while it was being dropped.
                    return;
                }
                if let Some(key) = self.key {
                    state.forget_unjoined(key, serial);
                }
            }
        }
        state.total -= 1;
    }
}

impl crate::engineio::Admission for Place {
    fn join(&self) -> bool {
        Place::join(self)
    }

    fn unjoin(self: Arc<Self>) {
        Place::unjoin(&self);
    }

    fn is_joined(&self) -> bool {
        Place::is_joined(self)
    }

    fn taken_back(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Place::taken_back(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, joined: usize, unjoined: usize) -> ConnectionLimits {
        ConnectionLimits {
            total,
            joined_per_address: joined,
            unjoined_per_address: unjoined,
            ipv6_prefix_len: 64,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_newcomer_takes_the_oldest_unjoined_place_of_its_address() {
        let gate = Gate::new(limits(100, 10, 2));
        let first = gate.admit(ip("10.0.0.1")).unwrap();
        let second = gate.admit(ip("10.0.0.1")).unwrap();
        let other = gate.admit(ip("10.0.0.2")).unwrap();
        let third = gate.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(first.state.load(Ordering::Acquire), TAKEN_BACK);
        assert!(!first.join(), "a place taken back cannot join");
        assert!(second.join() && third.join() && other.join());
        assert_eq!(gate.open(), 3);
        drop(first);
        assert_eq!(gate.open(), 3, "a taken-back place was uncounted already");
    }

    #[test]
    fn an_active_place_is_taken_back_last() {
        let gate = Gate::new(limits(100, 10, 2));
        let busy = gate.admit(ip("10.0.0.1")).unwrap();
        let idle = gate.admit(ip("10.0.0.1")).unwrap();
        busy.touch();
        let _newcomer = gate.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(idle.state.load(Ordering::Acquire), TAKEN_BACK);
        assert_eq!(busy.state.load(Ordering::Acquire), UNJOINED);
        drop((busy, idle));
        assert_eq!(gate.open(), 1);
    }

    #[test]
    fn joined_places_have_their_own_cap_and_are_never_taken_back() {
        let gate = Gate::new(limits(100, 2, 1));
        let a = ip("10.0.0.1");
        let joined: Vec<_> = (0..2)
            .map(|_| {
                let place = gate.admit(a).unwrap();
                assert!(place.join());
                place
            })
            .collect();
        let third = gate.admit(a).unwrap();
        assert!(!third.join(), "past the joined cap");
        assert!(!third.is_joined());
        let fourth = gate.admit(a).unwrap();
        assert_eq!(third.state.load(Ordering::Acquire), TAKEN_BACK);
        assert!(joined.iter().all(|place| place.is_joined()));
        drop(joined);
        assert!(fourth.join(), "a joined place freed is free again");
    }

    #[test]
    fn a_full_server_takes_back_the_oldest_unjoined_place_anywhere_or_refuses() {
        let gate = Gate::new(limits(2, 10, 10));
        let idle = gate.admit(ip("10.0.0.1")).unwrap();
        let joined = gate.admit(ip("10.0.0.2")).unwrap();
        assert!(joined.join());
        let newcomer = gate.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(idle.state.load(Ordering::Acquire), TAKEN_BACK);
        assert!(newcomer.join());
        assert_eq!(gate.admit(ip("10.0.0.4")).unwrap_err(), Refused::Total);
        assert_eq!(gate.open(), 2);
    }

    #[test]
    fn unjoin_returns_the_place_to_the_unjoined_pool() {
        let gate = Gate::new(limits(100, 1, 2));
        let place = gate.admit(ip("10.0.0.1")).unwrap();
        assert!(place.join());
        place.unjoin();
        assert!(!place.is_joined());
        let other = gate.admit(ip("10.0.0.1")).unwrap();
        assert!(other.join(), "the joined place was given back");
        drop((place, other));
        assert_eq!(gate.open(), 0);
        assert!(gate.state().by_address.is_empty());
        assert!(gate.state().unjoined.is_empty());
    }

    #[test]
    fn ipv6_clients_are_counted_per_prefix() {
        let gate = Gate::new(limits(100, 1, 10));
        let a = gate.admit(ip("2001:db8:1:2::1")).unwrap();
        let b = gate.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        let c = gate.admit(ip("2001:db8:1:3::1")).unwrap();
        assert!(a.join());
        assert!(!b.join(), "same /64");
        assert!(c.join(), "another /64");
        assert_eq!(
            AddressKey::new(ip("::ffff:10.0.0.1"), 64),
            AddressKey::new(ip("10.0.0.1"), 64)
        );
        assert_eq!(
            AddressKey::new(ip("2001:db8::1"), 128),
            AddressKey(ip("2001:db8::1"))
        );
        assert_eq!(AddressKey::new(ip("2001:db8::1"), 0), AddressKey(ip("::")));
    }

    #[test]
    fn proxy_connections_count_in_the_total_only() {
        let gate = Gate::new(limits(3, 1, 1));
        let proxied: Vec<_> = (0..2).map(|_| gate.admit_proxy().unwrap()).collect();
        assert!(
            proxied
                .iter()
                .all(|p| p.state.load(Ordering::Acquire) == UNJOINED)
        );
        assert!(proxied[0].join() && proxied[1].join());
        let direct = gate.admit(ip("127.0.0.1")).unwrap();
        assert!(direct.join());
        assert_eq!(gate.admit_proxy().unwrap_err(), Refused::Total);
    }

    #[tokio::test]
    async fn taken_back_wakes_the_holder() {
        let gate = Gate::new(limits(100, 10, 1));
        let first = gate.admit(ip("10.0.0.1")).unwrap();
        let waiter = tokio::spawn({
            let first = first.clone();
            async move { first.taken_back().await }
        });
        let _second = gate.admit(ip("10.0.0.1")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
