//! The store's side of an invalidation bus: the bus, once attached, and
//! whether it is connected — the gate every answer from the store passes.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::{BusLink, Invalidation, InvalidationBus};
use crate::handle::{Counter, Counters};

/// The bus a store publishes to and the state of its connection.
pub(crate) struct Gate {
    /// Odd while connected (always, without a bus), even while not; bumped
    /// by every change. A [`Watch`] taken at a lookup compares with it.
    state: Arc<AtomicU64>,
    /// The bus, once attached.
    bus: OnceLock<(Arc<dyn InvalidationBus>, BusLink)>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            state: Arc::new(AtomicU64::new(1)),
            bus: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("connected", &self.connected())
            .field("bus", &self.bus.get().map(|(bus, _)| bus))
            .finish()
    }
}

impl Gate {
    /// Attaches `bus` through `link`: disconnected from now until the bus
    /// reports a connection.
    ///
    /// # Panics
    ///
    /// When a bus is already attached.
    pub(crate) fn attach(&self, bus: Arc<dyn InvalidationBus>, link: BusLink) {
        self.state.fetch_add(1, Ordering::SeqCst);
        if self.bus.set((bus.clone(), link.clone())).is_err() {
            panic!("this validator store already has an invalidation bus");
        }
        tracing::info!(
            replica = %format_args!("{:016x}", link.replica_id()),
            ?bus,
            "invalidation bus attached: not answering from the validator store until it connects"
        );
        bus.attach(link);
    }

    /// Whether the bus is connected (always, without one).
    pub(crate) fn connected(&self) -> bool {
        self.state.load(Ordering::SeqCst) % 2 == 1
    }

    /// Records the bus's state; returns whether it changed. On a change to
    /// connected, `before_connecting` runs first (the store clears itself:
    /// it may have missed invalidations while disconnected).
    pub(crate) fn set_connected(&self, connected: bool, before_connecting: impl Fn()) -> bool {
        loop {
            let state = self.state.load(Ordering::SeqCst);
            if (state % 2 == 1) == connected {
                return false;
            }
            if connected {
                before_connecting();
            }
            if self
                .state
                .compare_exchange(state, state + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return true;
            }
        }
    }

    /// Publishes a local invalidation to the other replicas (nothing without
    /// a bus).
    pub(crate) fn publish(&self, invalidation: Invalidation) {
        if let Some((bus, link)) = self.bus.get() {
            bus.publish(link, &invalidation);
        }
    }

    /// The state now, to check later that it did not change; `None` without
    /// a bus (nothing can change then). Taken before a lookup reads the map:
    /// an entry read after a reconnection's clear began is then never taken
    /// for a fresh one.
    pub(crate) fn watch(&self, counters: &Arc<Counters>) -> Option<Watch> {
        self.bus.get().map(|_| Watch {
            state: self.state.clone(),
            at: self.state.load(Ordering::SeqCst),
            counters: counters.clone(),
            fallback_counted: Cell::new(false),
        })
    }
}

/// The bus's state when a lookup began.
#[derive(Debug)]
pub(crate) struct Watch {
    state: Arc<AtomicU64>,
    at: u64,
    /// Where a refusal is counted, once per lookup.
    counters: Arc<Counters>,
    fallback_counted: Cell<bool>,
}

impl Watch {
    /// Whether the bus was connected when the lookup began and has stayed so
    /// since: only then may what the lookup found answer. The first refusal
    /// of an entry that would otherwise answer is counted
    /// ([`Stats::bus_disconnected_fallbacks`](crate::Stats::bus_disconnected_fallbacks)).
    pub(crate) fn connected_throughout(&self) -> bool {
        let connected = self.at % 2 == 1 && self.state.load(Ordering::SeqCst) == self.at;
        if !connected && !self.fallback_counted.replace(true) {
            self.counters.bump(Counter::BusDisconnectedFallbacks);
        }
        connected
    }
}
