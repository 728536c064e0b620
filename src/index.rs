//! The access index: size and last access of every cached blob, and which of them may go.
//!
//! One small entry per file under `blobs/sha256/` (layers, configs and manifests alike), in memory.
//! It is never written anywhere of its own: the file system is the crash-safe copy. A blob's size
//! is its file's length, and its last access is its file's mtime, which berth sets when the blob is
//! read (at most once a [`TOUCH_EVERY`], so a hot blob costs no metadata write per pull). Blob files
//! never change after their rename into place, so their mtime is free for this, and a crash can at
//! worst lose the last few touches. On start the index is rebuilt with one directory scan (see the
//! `index` bench: 100,000 entries).
//!
//! Eviction is least-recently-used, between watermarks: when a new blob would take the cache past
//! the high watermark, the oldest entries go until it is back under the low one. Never chosen:
//! - a blob being read now (a [`Lease`] is held by every open reader);
//! - a blob that a manifest served in the last `keep_referenced` names ([`Index::pin`]): the
//!   client that just read the manifest is about to ask for it.
//!
//! A blob being written is not in the index (it lives in `tmp/` until its commit), but its room is:
//! a fill whose size is known reserves it when it starts ([`Index::admit`]), so the bytes it is
//! about to write count against `max_size` before they land on disk.
//!
//! Rule of dependency: uses `oci`, and `config` for the `[storage]` section its [`Limits`] are
//! built from; the store owns the files and does the unlinking.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::config::StorageConfig;
use crate::oci::Digest;

/// How stale a blob's recorded last access may get before a read records it again.
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// A blob's key: its raw sha256 (32 bytes, against 64 hex characters plus a heap allocation).
pub type Key = [u8; 32];

/// Seconds since the Unix epoch, as the index keeps them (u32 lasts until 2106 and keeps entries
/// small).
pub type Secs = u32;

/// The current time in index seconds.
pub fn now() -> Secs {
    secs(SystemTime::now())
}

/// A time in index seconds (clamped to the representable range).
pub fn secs(t: SystemTime) -> Secs {
    let s = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Secs::try_from(s).unwrap_or(Secs::MAX)
}

/// Index seconds as a time.
pub fn time(s: Secs) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(s))
}

/// The key of a digest.
pub fn key(d: &Digest) -> Key {
    let mut k = [0u8; 32];
    // A Digest is always 64 lowercase hex characters.
    hex::decode_to_slice(d.hex(), &mut k).expect("a digest's hex decodes to 32 bytes");
    k
}

/// The digest of a key.
pub fn digest(k: &Key) -> Digest {
    Digest::from_hex(&hex::encode(k)).expect("32 bytes encode to a digest")
}

/// What the cache may hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Most bytes on disk; `None`: no limit.
    pub max_size: Option<u64>,
    /// Share of `max_size` at which eviction starts.
    pub high: f64,
    /// Share of `max_size` at which it stops.
    pub low: f64,
    /// Entries not accessed for this long go.
    pub max_age: Option<Duration>,
    /// How long a manifest being served protects the blobs it names.
    pub keep_referenced: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: None,
            high: 0.95,
            low: 0.85,
            max_age: None,
            keep_referenced: Duration::from_secs(15 * 60),
        }
    }
}

impl Limits {
    /// What the store may hold, from the `[storage]` settings.
    pub fn from_config(st: &StorageConfig) -> Limits {
        Limits {
            max_size: st.max_size.map(|m| m.as_u64()),
            high: st.high_watermark,
            low: st.low_watermark,
            max_age: st.max_age,
            keep_referenced: st.keep_referenced,
        }
    }

    /// The high and low watermarks in bytes.
    pub fn watermarks(&self) -> Option<(u64, u64)> {
        self.max_size
            .map(|m| ((m as f64 * self.high) as u64, (m as f64 * self.low) as u64))
    }
}

/// One cached blob. 20 bytes of fields (24 with padding) beside its 32-byte key.
#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    /// Last access, as recorded (in memory; on disk as the file's mtime).
    last: Secs,
    /// Not evictable before this time (a manifest naming it was served).
    pinned_until: Secs,
    /// Open readers.
    readers: u32,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Bytes of the entries.
    bytes: u64,
    /// Bytes of commits admitted but not yet in place.
    reserved: u64,
}

/// The answer to [`Index::admit`].
#[derive(Debug)]
pub struct Admission {
    /// Entries taken out to make room: the caller removes their files.
    pub victims: Vec<(Key, u64)>,
    /// Whether the newcomer may be kept (its room is reserved).
    pub admitted: bool,
}

/// Why an entry was evicted (the `reason` label of the eviction metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The cache passed its high watermark.
    Size,
    /// Nobody pulled it for `max_age`.
    Age,
    /// A write found the disk full.
    DiskFull,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Size => "size",
            Reason::Age => "age",
            Reason::DiskFull => "disk_full",
        }
    }
}

/// The index's metric families.
#[derive(Clone)]
pub struct IndexMetrics {
    /// `berth_cache_bytes`
    pub bytes: IntGauge,
    /// `berth_cache_entries`
    pub entries: IntGauge,
    /// `berth_cache_evictions_total{reason}`
    pub evictions: IntCounterVec,
    /// `berth_cache_evicted_bytes_total{reason}`
    pub evicted_bytes: IntCounterVec,
    /// `berth_cache_max_bytes`, `berth_cache_high_watermark_bytes`, `berth_cache_low_watermark_bytes`
    pub max: IntGauge,
    pub high: IntGauge,
    pub low: IntGauge,
    /// `berth_cache_not_stored_total`: verified blobs served but not kept, for lack of room that
    /// eviction could free.
    pub not_stored: prometheus::IntCounter,
}

impl IndexMetrics {
    fn new() -> IndexMetrics {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["reason"]).expect("valid metric")
        };
        IndexMetrics {
            bytes: gauge(
                "berth_cache_bytes",
                "Bytes of blobs and manifests in the cache.",
            ),
            entries: gauge("berth_cache_entries", "Blobs and manifests in the cache."),
            evictions: counter(
                "berth_cache_evictions_total",
                "Cache entries evicted, by reason (size, age, disk_full).",
            ),
            evicted_bytes: counter(
                "berth_cache_evicted_bytes_total",
                "Bytes evicted from the cache, by reason.",
            ),
            max: gauge(
                "berth_cache_max_bytes",
                "The configured max_size (0: no limit).",
            ),
            high: gauge(
                "berth_cache_high_watermark_bytes",
                "Cache size at which eviction starts (0: no limit).",
            ),
            low: gauge(
                "berth_cache_low_watermark_bytes",
                "Cache size at which eviction stops (0: no limit).",
            ),
            not_stored: prometheus::IntCounter::new(
                "berth_cache_not_stored_total",
                "Verified blobs served but not kept because no room could be freed.",
            )
            .expect("valid metric"),
        }
    }

    /// Registers every family in `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.bytes.clone()))?;
        registry.register(Box::new(self.entries.clone()))?;
        registry.register(Box::new(self.evictions.clone()))?;
        registry.register(Box::new(self.evicted_bytes.clone()))?;
        registry.register(Box::new(self.max.clone()))?;
        registry.register(Box::new(self.high.clone()))?;
        registry.register(Box::new(self.low.clone()))?;
        registry.register(Box::new(self.not_stored.clone()))
    }
}

/// The access index. Cheap operations under one mutex: the hot paths (a touch, a lease, a pin) are
/// a hash lookup each.
pub struct Index {
    inner: Mutex<Inner>,
    /// Swapped whole by a reload ([`set_limits`](Index::set_limits)); read without a lock.
    limits: arc_swap::ArcSwap<Limits>,
    metrics: IndexMetrics,
}

/// Marks a blob as being read while it lives.
pub struct Lease {
    index: Arc<Index>,
    key: Key,
    /// Whether the entry was there to count it (only then is there something to give back).
    counted: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let mut inner = self.index.inner.lock().unwrap();
        if let Some(e) = inner.entries.get_mut(&self.key) {
            e.readers = e.readers.saturating_sub(1);
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &hex::encode(self.key))
            .finish()
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("entries", &self.len())
            .field("bytes", &self.bytes())
            .field("limits", &self.limits())
            .finish()
    }
}

impl Index {
    pub fn new(limits: Limits) -> Index {
        let index = Index {
            inner: Mutex::default(),
            limits: arc_swap::ArcSwap::from_pointee(limits),
            metrics: IndexMetrics::new(),
        };
        index.publish_limits(&limits);
        index
    }

    pub fn limits(&self) -> Limits {
        **self.limits.load()
    }

    /// New limits (a reload). Eviction to meet a lower limit is the caller's next
    /// [`Store::sweep`](crate::store::Store::sweep).
    pub fn set_limits(&self, limits: Limits) {
        self.limits.store(Arc::new(limits));
        self.publish_limits(&limits);
    }

    fn publish_limits(&self, limits: &Limits) {
        let (high, low) = limits.watermarks().unwrap_or((0, 0));
        self.metrics.max.set(limits.max_size.unwrap_or(0) as i64);
        self.metrics.high.set(high as i64);
        self.metrics.low.set(low as i64);
    }

    pub fn metrics(&self) -> &IndexMetrics {
        &self.metrics
    }

    /// Bytes of all entries.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().unwrap().bytes
    }

    /// Bytes reserved for blobs being written.
    pub fn reserved(&self) -> u64 {
        self.inner.lock().unwrap().reserved
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The digests of every entry, now (a copy: the lock is held for the copy only).
    pub fn digests(&self) -> Vec<Digest> {
        let inner = self.inner.lock().unwrap();
        inner.entries.keys().map(digest).collect()
    }

    /// Records a blob (a new commit, or one found on start). Replaces an entry for the same key.
    pub fn insert(&self, key: Key, size: u64, last: Secs) {
        let mut inner = self.inner.lock().unwrap();
        self.insert_locked(&mut inner, key, size, last);
    }

    fn insert_locked(&self, inner: &mut Inner, key: Key, size: u64, last: Secs) {
        let old = inner.entries.insert(
            key,
            Entry {
                size,
                last,
                pinned_until: 0,
                readers: 0,
            },
        );
        if let Some(old) = old {
            // Keep pins and readers of the entry it replaces.
            inner.bytes -= old.size;
            let e = inner.entries.get_mut(&key).expect("just inserted");
            e.pinned_until = old.pinned_until;
            e.readers = old.readers;
        }
        inner.bytes += size;
        self.publish(inner);
    }

    /// Forgets a blob; its size if it was there.
    pub fn remove(&self, key: &Key) -> Option<u64> {
        let mut inner = self.inner.lock().unwrap();
        let e = inner.entries.remove(key)?;
        inner.bytes -= e.size;
        self.publish(&inner);
        Some(e.size)
    }

    /// Records an access at `now`. True when the recorded time was older than [`TOUCH_EVERY`]:
    /// the caller should then record it on disk too (the file's mtime).
    pub fn touch(&self, key: &Key, now: Secs) -> bool {
        let mut inner = self.inner.lock().unwrap();
        match inner.entries.get_mut(key) {
            Some(e) if now.saturating_sub(e.last) >= TOUCH_EVERY.as_secs() as Secs => {
                e.last = now;
                true
            }
            _ => false,
        }
    }

    /// Marks a blob as being read until the lease is dropped. A key not (yet) in the index gets a
    /// lease that protects nothing: such a reader holds its file open, which keeps its bytes.
    pub fn lease(self: &Arc<Self>, key: Key) -> Lease {
        let counted = match self.inner.lock().unwrap().entries.get_mut(&key) {
            Some(e) => {
                e.readers += 1;
                true
            }
            None => false,
        };
        Lease {
            index: self.clone(),
            key,
            counted,
        }
    }

    /// Protects `keys` from eviction for `keep_referenced` from `now`, and counts as an access.
    pub fn pin(&self, keys: impl IntoIterator<Item = Key>, now: Secs) {
        let until = now.saturating_add(self.limits().keep_referenced.as_secs() as Secs);
        let mut inner = self.inner.lock().unwrap();
        for k in keys {
            if let Some(e) = inner.entries.get_mut(&k) {
                e.pinned_until = e.pinned_until.max(until);
                e.last = e.last.max(now);
            }
        }
    }

    /// Whether the cache (with the commits under way) is past its high watermark.
    pub fn over_high(&self) -> bool {
        let inner = self.inner.lock().unwrap();
        self.limits()
            .watermarks()
            .is_some_and(|(high, _)| inner.bytes + inner.reserved > high)
    }

    /// Asks room for `incoming` bytes about to be written (a fill starting, or a commit that
    /// reserved nothing). If it takes the cache (with the other reservations) past the high
    /// watermark, the least recently used evictable entries are taken out
    /// first, down to the low watermark; the caller removes their files. The room is then
    /// reserved if it fits under `max_size`: the caller ends the reservation with
    /// [`insert_reserved`](Self::insert_reserved) or [`release`](Self::release). Reserving under
    /// the same lock as the check keeps concurrent commits from each counting on the same room.
    ///
    /// Nothing is evicted in vain: when even evicting everything evictable would not make room,
    /// nothing goes, and the newcomer is refused.
    pub fn admit(&self, incoming: u64, now: Secs) -> Admission {
        let mut inner = self.inner.lock().unwrap();
        let limits = self.limits();
        let (Some(max), Some((high, low))) = (limits.max_size, limits.watermarks()) else {
            inner.reserved += incoming;
            return Admission {
                victims: Vec::new(),
                admitted: true,
            };
        };
        let mut victims = Vec::new();
        if inner.bytes + inner.reserved + incoming > high {
            let goal = low.saturating_sub(incoming + inner.reserved);
            let reserved = inner.reserved;
            victims = take(&mut inner, goal, now, |bytes, evictable| {
                bytes - evictable + reserved + incoming <= max
            });
            self.publish(&inner);
        }
        let admitted = inner.bytes + inner.reserved + incoming <= max;
        if admitted {
            inner.reserved += incoming;
        }
        Admission { victims, admitted }
    }

    /// Ends a reservation with the blob in place (under one lock: its bytes are counted in one
    /// place or the other at every moment).
    pub fn insert_reserved(&self, key: Key, size: u64, now: Secs) {
        let mut inner = self.inner.lock().unwrap();
        inner.reserved = inner.reserved.saturating_sub(size);
        self.insert_locked(&mut inner, key, size, now);
    }

    /// Ends a reservation without the blob (its commit failed).
    pub fn release(&self, size: u64) {
        let mut inner = self.inner.lock().unwrap();
        inner.reserved = inner.reserved.saturating_sub(size);
    }

    /// Takes out, least recently used first, evictable entries until the cache is back under its
    /// low watermark. For the maintenance pass (pins that ran out since the last commit).
    pub fn take_for_room(&self, now: Secs) -> Vec<(Key, u64)> {
        let Some((_, low)) = self.limits().watermarks() else {
            return Vec::new();
        };
        let mut inner = self.inner.lock().unwrap();
        let goal = low.saturating_sub(inner.reserved);
        let out = take(&mut inner, goal, now, |_, _| true);
        self.publish(&inner);
        out
    }

    /// Takes out the least recently used evictable entries until the cache holds at most `goal`
    /// bytes (or nothing evictable is left).
    pub fn take_lru(&self, goal: u64, now: Secs) -> Vec<(Key, u64)> {
        let mut inner = self.inner.lock().unwrap();
        let out = take(&mut inner, goal, now, |_, _| true);
        self.publish(&inner);
        out
    }

    /// Takes out every evictable entry last accessed more than `max_age` before `now`.
    pub fn take_expired(&self, now: Secs) -> Vec<(Key, u64)> {
        let Some(age) = self.limits().max_age else {
            return Vec::new();
        };
        let cutoff = now.saturating_sub(Secs::try_from(age.as_secs()).unwrap_or(Secs::MAX));
        let mut inner = self.inner.lock().unwrap();
        let old: Vec<Key> = inner
            .entries
            .iter()
            .filter(|(_, e)| e.last < cutoff && evictable(e, now))
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::with_capacity(old.len());
        for k in old {
            let e = inner.entries.remove(&k).expect("present");
            inner.bytes -= e.size;
            out.push((k, e.size));
        }
        self.publish(&inner);
        out
    }

    /// Counts evictions that happened.
    pub fn evicted(&self, reason: Reason, count: u64, bytes: u64) {
        if count > 0 {
            let r = [reason.as_str()];
            self.metrics.evictions.with_label_values(&r).inc_by(count);
            self.metrics
                .evicted_bytes
                .with_label_values(&r)
                .inc_by(bytes);
        }
    }

    /// Every entry: key, size, last access. For operator tools.
    pub fn snapshot(&self) -> Vec<(Key, u64, Secs)> {
        let inner = self.inner.lock().unwrap();
        inner
            .entries
            .iter()
            .map(|(k, e)| (*k, e.size, e.last))
            .collect()
    }

    fn publish(&self, inner: &Inner) {
        self.metrics.bytes.set(inner.bytes as i64);
        self.metrics.entries.set(inner.entries.len() as i64);
    }
}

/// The LRU pass: takes entries out, oldest first, until `inner` holds at most `goal` bytes;
/// `worth(bytes, evictable_bytes)` decides whether to evict at all.
fn take(
    inner: &mut Inner,
    goal: u64,
    now: Secs,
    worth: impl Fn(u64, u64) -> bool,
) -> Vec<(Key, u64)> {
    if inner.bytes <= goal {
        return Vec::new();
    }
    let mut candidates: Vec<(Secs, Key)> = Vec::new();
    let mut evictable_bytes = 0;
    for (k, e) in &inner.entries {
        if evictable(e, now) {
            candidates.push((e.last, *k));
            evictable_bytes += e.size;
        }
    }
    if !worth(inner.bytes, evictable_bytes) {
        return Vec::new();
    }
    candidates.sort_unstable();
    let mut out = Vec::new();
    for (_, k) in candidates {
        if inner.bytes <= goal {
            break;
        }
        let e = inner.entries.remove(&k).expect("candidate is present");
        inner.bytes -= e.size;
        out.push((k, e.size));
    }
    out
}

fn evictable(e: &Entry, now: Secs) -> bool {
    e.readers == 0 && e.pinned_until <= now
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u8) -> Key {
        [n; 32]
    }

    /// Every entry's digest, whatever its state (an empty index: none).
    #[test]
    fn digests_lists_every_entry() {
        let i = Index::new(limits(1000));
        assert!(i.digests().is_empty());
        i.insert(k(1), 10, 0);
        i.insert(k(2), 10, 0);
        let mut got = i.digests();
        got.sort_by_key(|d| d.to_string());
        assert_eq!(got, vec![digest(&k(1)), digest(&k(2))]);
    }

    fn limits(max: u64) -> Limits {
        Limits {
            max_size: Some(max),
            high: 0.9,
            low: 0.5,
            max_age: Some(Duration::from_secs(100)),
            keep_referenced: Duration::from_secs(60),
        }
    }

    #[test]
    fn keys_round_trip_digests() {
        let d = Digest::of(b"x");
        assert_eq!(digest(&key(&d)), d);
    }

    #[test]
    fn evicts_least_recently_used_down_to_the_low_watermark() {
        let ix = Index::new(limits(1000));
        for n in 0..10u8 {
            ix.insert(k(n), 100, 1000 + u32::from(n));
        }
        assert_eq!(ix.bytes(), 1000);
        assert!(ix.over_high());
        // Room for 100 more under the low watermark (500): 600 bytes go, the oldest first.
        let a = ix.admit(100, 2000);
        let keys: Vec<Key> = a.victims.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, (0..6).map(k).collect::<Vec<_>>());
        assert!(a.admitted);
        assert_eq!(ix.bytes(), 400);
        // The 100 are reserved until they are in place: a second newcomer counts them.
        let b = ix.admit(450, 2000);
        assert!(b.admitted && b.victims.len() == 4, "{b:?}");
        ix.insert_reserved(k(20), 100, 2001);
        ix.release(450);
        assert_eq!(ix.bytes(), 100);
        assert!(!ix.over_high());
    }

    #[test]
    fn a_touch_moves_an_entry_to_the_back_and_is_persisted_at_most_once_a_minute() {
        let ix = Index::new(limits(300));
        ix.insert(k(1), 100, 1000);
        ix.insert(k(2), 100, 1001);
        ix.insert(k(3), 100, 1002);
        assert!(ix.touch(&k(1), 1100));
        assert!(!ix.touch(&k(1), 1130), "within TOUCH_EVERY: memory only");
        assert!(!ix.touch(&k(9), 1100), "unknown key");
        let gone = ix.take_lru(100, 1200);
        assert_eq!(
            gone.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [k(2), k(3)]
        );
    }

    #[test]
    fn read_and_pinned_entries_are_never_chosen() {
        let ix = Arc::new(Index::new(limits(1000)));
        for n in 0..4u8 {
            ix.insert(k(n), 100, 1000 + u32::from(n));
        }
        let lease = ix.lease(k(0));
        ix.pin([k(1)], 1010);
        let gone: Vec<Key> = ix.take_lru(0, 1020).into_iter().map(|(k, _)| k).collect();
        assert_eq!(gone, [k(2), k(3)]);
        // The pin ran out (60 s) and the reader left: now they go too.
        drop(lease);
        let gone: Vec<Key> = ix.take_lru(0, 1071).into_iter().map(|(k, _)| k).collect();
        assert_eq!(gone, [k(0), k(1)]);
        assert_eq!((ix.bytes(), ix.len()), (0, 0));
    }

    #[test]
    fn nothing_is_evicted_in_vain_for_a_newcomer_that_cannot_fit() {
        let ix = Arc::new(Index::new(limits(1000)));
        for n in 0..5u8 {
            ix.insert(k(n), 100, 1000 + u32::from(n));
        }
        ix.pin([k(0), k(1), k(2)], 1010);
        // 300 pinned + 800 incoming > 1000: evicting the other two would not help.
        let a = ix.admit(800, 1020);
        assert!(a.victims.is_empty() && !a.admitted);
        assert_eq!(ix.len(), 5);
        // 300 pinned + 600 fits: both unpinned go (the low watermark, 500, is out of reach).
        let a = ix.admit(600, 1020);
        assert!(a.admitted && a.victims.len() == 2);
    }

    #[test]
    fn a_pin_counts_as_an_access() {
        let ix = Index::new(limits(1000));
        ix.insert(k(1), 100, 1000);
        ix.insert(k(2), 100, 1001);
        ix.pin([k(1)], 1050);
        let gone: Vec<Key> = ix.take_lru(100, 2000).into_iter().map(|(k, _)| k).collect();
        assert_eq!(gone, [k(2)]);
    }

    #[test]
    fn expiry_takes_what_nobody_pulled_for_max_age() {
        let ix = Arc::new(Index::new(limits(1000)));
        ix.insert(k(1), 10, 1000);
        ix.insert(k(2), 10, 1050);
        ix.insert(k(3), 10, 1000);
        let _reading = ix.lease(k(3));
        let gone: Vec<Key> = ix.take_expired(1120).into_iter().map(|(k, _)| k).collect();
        assert_eq!(gone, [k(1)]);
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn without_a_max_size_nothing_is_evicted_for_room() {
        let ix = Index::new(Limits::default());
        ix.insert(k(1), u64::MAX / 4, 0);
        assert!(!ix.over_high());
        let a = ix.admit(u64::MAX / 4, 10);
        assert!(a.admitted && a.victims.is_empty());
        assert!(ix.take_for_room(10).is_empty());
        assert!(ix.take_expired(u32::MAX).is_empty());
    }

    #[test]
    fn replacing_an_entry_keeps_the_byte_count_right() {
        let ix = Index::new(limits(1000));
        ix.insert(k(1), 100, 0);
        ix.insert(k(1), 150, 0);
        assert_eq!((ix.bytes(), ix.len()), (150, 1));
        assert_eq!(ix.remove(&k(1)), Some(150));
        assert_eq!(ix.remove(&k(1)), None);
        assert_eq!(ix.bytes(), 0);
    }
}
