//! The upstream set: which upstreams exist now and which host names select them, as one immutable
//! snapshot that a reload replaces whole.
//!
//! Requests, tag keys and routes name an upstream by its *slot*: a small number given to an
//! upstream name the first time this process sees it (config order at start, then each name a
//! reload adds) and never reused or renumbered. So a slot always means the same upstream name
//! (tags on disk are kept under the name), a cached tag answer keyed by slot stays right across
//! reloads, and a request routed with one snapshot and served with the next reaches the same
//! upstream by name (with its new settings), or, if a reload removed it, an empty slot (503).
//! A slot of a removed name stays empty until a reload adds the name back.
//!
//! Trade-off: the router (`http`) loads the snapshot once per request, but the mirror looks its
//! upstream up again by slot (that keeps its signatures as they were); a request racing a reload
//! can therefore route with the old host table and fetch with the new settings. Both are
//! consistent views of one upstream name, and a fill already running keeps the `Arc<Upstream>` it
//! started with to its end.
//!
//! Rule of dependency: uses `config` and `upstream`; `http` routes with [`Hosts`], `mirror` fetches
//! through [`UpstreamSet::get`], `assemble` builds them and `reload` swaps them.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use prometheus::IntCounter;

use crate::config::UpstreamConfig;
use crate::upstream::Upstream;

/// Which host names select which upstream slot.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    by_host: HashMap<String, usize>,
    default: Option<usize>,
    /// By slot; false for empty slots.
    library_prefix: Vec<bool>,
}

impl Hosts {
    /// The table for `upstreams` in slots 0, 1, ... (config order): how berth starts.
    pub fn new(upstreams: &[UpstreamConfig]) -> Hosts {
        Hosts::with_slots(upstreams.iter().enumerate())
    }

    /// The table for upstreams in the given slots.
    pub fn with_slots<'a>(
        upstreams: impl IntoIterator<Item = (usize, &'a UpstreamConfig)>,
    ) -> Hosts {
        let mut hosts = Hosts::default();
        for (slot, u) in upstreams {
            for h in u.hosts() {
                hosts.by_host.insert(h, slot);
            }
            if u.default {
                hosts.default = Some(slot);
            }
            if hosts.library_prefix.len() <= slot {
                hosts.library_prefix.resize(slot + 1, false);
            }
            hosts.library_prefix[slot] = u.uses_library_prefix();
        }
        hosts
    }

    /// The slot a host name (or alias) selects.
    pub fn lookup(&self, host: &str) -> Option<usize> {
        self.by_host.get(&host.to_ascii_lowercase()).copied()
    }

    /// The slot of the default upstream, if one is configured.
    pub fn default_slot(&self) -> Option<usize> {
        self.default
    }

    /// Whether one-part names get `library/` in front on this slot's upstream.
    pub fn library_prefix(&self, slot: usize) -> bool {
        self.library_prefix.get(slot).copied().unwrap_or(false)
    }
}

/// One configured upstream in its slot.
pub struct Slot {
    pub upstream: Arc<Upstream>,
    /// `berth_cache_lookups_total{kind="manifest"|"tag",outcome="hit"}` for it, resolved on first
    /// use: a cached manifest is answered tens of thousands of times a second.
    pub hits: [OnceLock<IntCounter>; 2],
}

/// The upstreams configured now, by slot, and the host table that routes to them.
pub struct UpstreamSet {
    slots: Vec<Option<Slot>>,
    hosts: Hosts,
}

impl UpstreamSet {
    /// `upstreams` with their slots; slots not named are empty.
    pub fn new(upstreams: Vec<(usize, Arc<Upstream>)>) -> UpstreamSet {
        let hosts = Hosts::with_slots(upstreams.iter().map(|(s, u)| (*s, u.config())));
        let len = upstreams.iter().map(|(s, _)| s + 1).max().unwrap_or(0);
        let mut slots: Vec<Option<Slot>> = (0..len).map(|_| None).collect();
        for (s, upstream) in upstreams {
            slots[s] = Some(Slot {
                upstream,
                hits: Default::default(),
            });
        }
        UpstreamSet { slots, hosts }
    }

    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }

    /// The upstream in `slot`, unless a reload removed it.
    pub fn get(&self, slot: usize) -> Option<&Slot> {
        self.slots.get(slot)?.as_ref()
    }

    /// The configured upstreams with their slots, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Arc<Upstream>)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, &s.as_ref()?.upstream)))
    }

    /// The configured upstreams' names, in slot order.
    pub fn names(&self) -> Vec<String> {
        self.iter().map(|(_, u)| u.name().to_owned()).collect()
    }
}
