//! Single-flight: one computation per key, its result shared by everyone who asked meanwhile.
//!
//! The first caller for a key is the **leader**: its computation runs in a task of its own, so it
//! finishes (and its result is cached by whoever computes it) even if the leader's client goes
//! away. Callers arriving while it runs are **followers**: they wait for the same result. When the
//! computation ends the key is cleared, so the next caller starts afresh. A follower waits at most
//! `wait` and then gives up with [`Abandoned::TimedOut`]; a computation that panics leaves its
//! followers with [`Abandoned::Vanished`]. The result type is `Clone` (errors included), so one
//! failure reaches every follower.
//!
//! Blob fills are single-flight too, but they share a growing file rather than a value; they live
//! in `fill` on top of `store::FillState`. Rule of dependency: generic; knows no other module.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// How a caller took part in a flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

/// Why a follower got no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Abandoned {
    #[error("gave up waiting for the request already in flight")]
    TimedOut,
    #[error("the request in flight ended without a result")]
    Vanished,
}

/// Flights in progress, by key.
pub struct Flights<K, V> {
    running: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
    wait: Duration,
}

impl<K, V> Flights<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// `wait` bounds how long a follower waits for the leader's result.
    pub fn new(wait: Duration) -> Self {
        Flights {
            running: Arc::default(),
            wait,
        }
    }

    /// How many flights are running.
    pub fn len(&self) -> usize {
        self.running.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `work` for `key` unless a flight for it is already running, and returns that flight's
    /// result either way.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> (Result<V, Abandoned>, Role)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let joined = self.join(key, work);
        let role = joined.role;
        (joined.result().await, role)
    }

    /// Like [`run`](Self::run), but tells the caller its role before it waits (for metrics).
    pub fn join<F, Fut>(&self, key: K, work: F) -> Joined<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let mut running = self.running.lock().unwrap();
        if let Some(rx) = running.get(&key) {
            return Joined {
                role: Role::Follower,
                rx: rx.clone(),
                wait: self.wait,
            };
        }
        let (tx, rx) = watch::channel(None);
        running.insert(key.clone(), rx.clone());
        drop(running);
        let fut = work();
        let map = self.running.clone();
        let mine = rx.clone();
        tokio::spawn(async move {
            // Clears the key even if `fut` panics (the guard runs on unwind).
            let _clear = ClearOnDrop { map, key, mine };
            let v = fut.await;
            tx.send_replace(Some(v));
        });
        Joined {
            role: Role::Leader,
            rx,
            wait: self.wait,
        }
    }
}

/// A caller's place in a flight.
pub struct Joined<V> {
    pub role: Role,
    rx: watch::Receiver<Option<V>>,
    wait: Duration,
}

impl<V: Clone> Joined<V> {
    /// The flight's result, waiting at most the configured time.
    pub async fn result(mut self) -> Result<V, Abandoned> {
        let waited = tokio::time::timeout(self.wait, self.rx.wait_for(Option::is_some)).await;
        match waited {
            Err(_) => Err(Abandoned::TimedOut),
            Ok(Err(_)) => Err(Abandoned::Vanished),
            Ok(Ok(v)) => Ok(v.clone().expect("waited for Some")),
        }
    }
}

struct ClearOnDrop<K: Eq + Hash, V> {
    map: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
    key: K,
    mine: watch::Receiver<Option<V>>,
}

impl<K: Eq + Hash, V> Drop for ClearOnDrop<K, V> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Only this flight's entry: a newer flight for the key may already be there.
        if map
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.mine))
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Yields until a flight runs; fails after 10 s of wall-clock time (a paused tokio clock does
    /// not move while this loops).
    async fn until_started<K, V>(flights: &Flights<K, V>)
    where
        K: Eq + Hash + Clone + Send + 'static,
        V: Clone + Send + Sync + 'static,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while flights.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "no flight started within 10 s"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_computation() {
        let flights: Arc<Flights<&str, u32>> = Arc::new(Flights::new(Duration::from_secs(5)));
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, gate) = watch::channel(false);
        let mut handles = Vec::new();
        for _ in 0..10 {
            let (f, runs, mut gate) = (flights.clone(), runs.clone(), gate.clone());
            handles.push(tokio::spawn(async move {
                f.run("k", move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.wait_for(|open| *open).await;
                    42
                })
                .await
            }));
        }
        // Let every caller join before the leader finishes.
        until_started(&flights).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        release.send_replace(true);
        let mut leaders = 0;
        for h in handles {
            let (v, role) = h.await.unwrap();
            assert_eq!(v, Ok(42));
            leaders += (role == Role::Leader) as usize;
        }
        assert_eq!(leaders, 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty(), "key cleared after the flight");
    }

    #[tokio::test]
    async fn the_next_caller_after_a_flight_starts_a_new_one() {
        let flights: Flights<u8, u8> = Flights::new(Duration::from_secs(5));
        assert_eq!(flights.run(1, || async { 1 }).await, (Ok(1), Role::Leader));
        assert_eq!(flights.run(1, || async { 2 }).await, (Ok(2), Role::Leader));
    }

    #[tokio::test(start_paused = true)]
    async fn followers_give_up_after_the_wait() {
        let flights: Arc<Flights<u8, u8>> = Arc::new(Flights::new(Duration::from_secs(30)));
        let f = flights.clone();
        let leader = tokio::spawn(async move {
            f.run(1, || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                1
            })
            .await
        });
        until_started(&flights).await;
        let (follower, role) = flights.run(1, || async { 9 }).await;
        assert_eq!((follower, role), (Err(Abandoned::TimedOut), Role::Follower));
        leader.abort();
    }

    #[tokio::test]
    async fn a_panicking_computation_releases_its_followers_and_its_key() {
        let flights: Arc<Flights<u8, u8>> = Arc::new(Flights::new(Duration::from_secs(30)));
        let (release, gate) = watch::channel(false);
        let f = flights.clone();
        let mut g = gate.clone();
        let leader = tokio::spawn(async move {
            f.run(1, move || async move {
                let _ = g.wait_for(|o| *o).await;
                panic!("boom")
            })
            .await
        });
        until_started(&flights).await;
        let f = flights.clone();
        let follower = tokio::spawn(async move { f.run(1, || async { 9 }).await });
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        release.send_replace(true);
        assert_eq!(leader.await.unwrap().0, Err(Abandoned::Vanished));
        assert_eq!(follower.await.unwrap().0, Err(Abandoned::Vanished));
        assert!(flights.is_empty());
    }
}
