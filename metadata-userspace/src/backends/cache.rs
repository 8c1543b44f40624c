//! A response cache in front of Nova, for boot storms: hundreds of guests
//! crawling the same tree at once, each many times over (cloud-init reads
//! meta_data.json from several datasource passes).
//!
//! Rules, each one a reason a cached answer can never be wrong:
//! - The key is everything Nova sees: the instance, its project, the
//!   guest's address and the path with its query. No entry is shared
//!   across instances.
//! - An entry is served only while the instance's port record is the one
//!   it was fetched for: a changed record (new address, new project, a
//!   re-created port) misses, and the fresh answer replaces it.
//! - Only GET, only 200, never the password endpoint (its answer changes
//!   when the guest posts, and it is a secret).
//! - Identical requests in flight at once share one upstream call; a
//!   non-200 answer goes to those waiting and is not kept.
//! - Bounded: entries live `ttl` (Nova's own `metadata_cache_expiration`
//!   defaults to 15 s) and all bodies together stay under a byte budget.

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use http::{Method, StatusCode, request::Parts};
use tokio::sync::OnceCell;

use super::Reply;
use crate::inventory::{Identity, Instance};

/// All cached bodies together stay under this many bytes.
const MAX_BYTES: usize = 64 * 1024 * 1024;

/// How a request was answered, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// From a fresh entry.
    Hit,
    /// By an upstream call this request made.
    Miss,
    /// By an upstream call another identical request was making.
    Collapsed,
    /// Not cacheable (not a GET, or the password endpoint).
    Bypass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    instance_id: String,
    project_id: String,
    guest_addr: IpAddr,
    path_and_query: String,
}

#[derive(Debug)]
struct Entry {
    /// The port record the answer was fetched for.
    record: Arc<Instance>,
    /// The answer and when it arrived; empty while the call is in flight.
    answer: OnceCell<(Reply, Instant)>,
}

impl Entry {
    /// Whether a request from `record` at `now` may use this entry: the
    /// same record, and either in flight or a fresh 200.
    fn usable(&self, record: &Arc<Instance>, now: Instant, ttl: Duration) -> bool {
        let same_record = Arc::ptr_eq(&self.record, record) || *self.record == **record;
        same_record
            && self.answer.get().is_none_or(|(reply, at)| {
                reply.status == StatusCode::OK && now.duration_since(*at) < ttl
            })
    }

    fn bytes(&self) -> usize {
        self.answer.get().map_or(0, |(reply, _)| reply.body.len())
    }
}

#[derive(Debug)]
struct Entries {
    map: HashMap<Key, Arc<Entry>>,
    /// Body bytes of the 200s in `map`.
    bytes: usize,
    last_sweep: Instant,
}

impl Default for Entries {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            bytes: 0,
            last_sweep: Instant::now(),
        }
    }
}

impl Entries {
    fn remove(&mut self, key: &Key) {
        if let Some(entry) = self.map.remove(key) {
            self.bytes -= entry.bytes().min(self.bytes);
        }
    }

    /// Drops every entry that is neither in flight nor fresh.
    fn sweep(&mut self, now: Instant, ttl: Duration) {
        self.map.retain(|_, entry| {
            entry
                .answer
                .get()
                .is_none_or(|(_, at)| now.duration_since(*at) < ttl)
        });
        self.bytes = self.map.values().map(|entry| entry.bytes()).sum();
        self.last_sweep = now;
    }
}

/// The cache; `ttl` zero means off.
#[derive(Debug)]
pub struct ResponseCache {
    ttl: Duration,
    entries: Mutex<Entries>,
}

impl ResponseCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// The answer to `parts` from `who`: a fresh cached one, the one an
    /// identical request in flight gets, or `fetch`'s.
    pub async fn get_or_fetch<F>(&self, who: &Identity, parts: &Parts, fetch: F) -> (Reply, Lookup)
    where
        F: Future<Output = Reply>,
    {
        if self.ttl.is_zero() || !cacheable(parts) {
            return (fetch.await, Lookup::Bypass);
        }
        let key = Key {
            instance_id: who.instance.id.clone(),
            project_id: who.instance.project_id.clone(),
            guest_addr: who.guest_addr,
            path_and_query: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        };
        let entry = self.entry(&key, &who.instance);
        if let Some((reply, _)) = entry.answer.get() {
            return (reply.clone(), Lookup::Hit);
        }
        let mut fetched = false;
        let (reply, _) = entry
            .answer
            .get_or_init(|| async {
                fetched = true;
                (fetch.await, Instant::now())
            })
            .await;
        let reply = reply.clone();
        if fetched {
            self.settle(&key, &entry);
        }
        (
            reply,
            if fetched {
                Lookup::Miss
            } else {
                Lookup::Collapsed
            },
        )
    }

    /// The usable entry for `key`, or a new empty one in its place.
    fn entry(&self, key: &Key, record: &Arc<Instance>) -> Arc<Entry> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.map.get(key)
            && entry.usable(record, now, self.ttl)
        {
            return Arc::clone(entry);
        }
        entries.remove(key);
        if now.duration_since(entries.last_sweep) >= self.ttl {
            // Amortised: one pass per ttl, so a storm's entries do not
            // outlive it by more than that.
            entries.sweep(now, self.ttl);
        }
        let entry = Arc::new(Entry {
            record: Arc::clone(record),
            answer: OnceCell::new(),
        });
        entries.map.insert(key.clone(), Arc::clone(&entry));
        entry
    }

    /// Keeps a fetched 200 within the byte budget; forgets anything else.
    fn settle(&self, key: &Key, entry: &Arc<Entry>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let current = entries.map.get(key).is_some_and(|e| Arc::ptr_eq(e, entry));
        if !current {
            // Replaced meanwhile (a changed record): the newer one stays.
            return;
        }
        let ok = entry
            .answer
            .get()
            .is_some_and(|(reply, _)| reply.status == StatusCode::OK);
        if !ok {
            entries.remove(key);
            return;
        }
        if entries.bytes + entry.bytes() > MAX_BYTES {
            entries.sweep(Instant::now(), self.ttl);
        }
        if entries.bytes + entry.bytes() > MAX_BYTES {
            entries.map.remove(key);
            return;
        }
        entries.bytes += entry.bytes();
    }

    /// Drops expired entries.
    pub fn sweep(&self) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sweep(Instant::now(), self.ttl);
    }

    /// Entries held now.
    pub fn entries(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }
}

/// Only GETs, and never the password: it changes when the guest posts one
/// and it is a secret.
fn cacheable(parts: &Parts) -> bool {
    parts.method == Method::GET && !parts.uri.path().contains("password")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::inventory::PortIndex;

    fn record(id: &str, name: &str) -> Arc<Instance> {
        let text = format!(
            "[[instance]]\nid = \"{id}\"\nproject_id = \"p\"\nname = \"{name}\"\n\
             [[instance.port]]\ndevice = \"tap0\"\nmac = \"fa:16:3e:00:00:01\"\n\
             network_id = \"n\"\nips = [\"10.0.0.5/24\"]\n"
        );
        let index = PortIndex::parse(std::path::Path::new("instances.toml"), &text).unwrap();
        Arc::new(index.instances().next().unwrap().clone())
    }

    fn identity(id: &str, addr: &str) -> Identity {
        Identity {
            instance: record(id, id),
            port: 0,
            device: "tap0".into(),
            guest_addr: addr.parse().unwrap(),
        }
    }

    fn get(path: &str) -> Parts {
        http::Request::get(path).body(()).unwrap().into_parts().0
    }

    async fn answer(
        cache: &ResponseCache,
        who: &Identity,
        parts: &Parts,
        calls: &AtomicUsize,
        status: StatusCode,
    ) -> (Reply, Lookup) {
        cache
            .get_or_fetch(who, parts, async {
                calls.fetch_add(1, Ordering::SeqCst);
                let mut reply = Reply::text(format!("{} {}", who.instance.id, parts.uri));
                reply.status = status;
                reply
            })
            .await
    }

    #[tokio::test]
    async fn a_fresh_200_is_reused_for_the_same_instance_only() {
        let cache = ResponseCache::new(Duration::from_secs(15));
        let calls = AtomicUsize::new(0);
        let (a, b) = (identity("a", "10.0.0.5"), identity("b", "10.0.0.5"));
        let md = get("/openstack/latest/meta_data.json");
        let ok = StatusCode::OK;
        assert_eq!(answer(&cache, &a, &md, &calls, ok).await.1, Lookup::Miss);
        let (reply, lookup) = answer(&cache, &a, &md, &calls, ok).await;
        assert_eq!((lookup, calls.load(Ordering::SeqCst)), (Lookup::Hit, 1));
        assert!(reply.body.starts_with(b"a "));
        let (reply, lookup) = answer(&cache, &b, &md, &calls, ok).await;
        assert_eq!(lookup, Lookup::Miss, "another instance never hits");
        assert!(reply.body.starts_with(b"b "));
        let other_path = get("/openstack/latest/meta_data.json?x=1");
        assert_eq!(
            answer(&cache, &a, &other_path, &calls, ok).await.1,
            Lookup::Miss
        );
    }

    #[tokio::test]
    async fn errors_posts_and_passwords_are_never_kept() {
        let cache = ResponseCache::new(Duration::from_secs(15));
        let calls = AtomicUsize::new(0);
        let a = identity("a", "10.0.0.5");
        let missing = get("/openstack/latest/nope");
        for _ in 0..2 {
            let lookup = answer(&cache, &a, &missing, &calls, StatusCode::NOT_FOUND).await;
            assert_eq!(lookup.1, Lookup::Miss);
        }
        let password = get("/openstack/latest/password");
        for _ in 0..2 {
            let lookup = answer(&cache, &a, &password, &calls, StatusCode::OK).await;
            assert_eq!(lookup.1, Lookup::Bypass);
        }
        let mut post = get("/openstack/latest/meta_data.json");
        post.method = Method::POST;
        let lookup = answer(&cache, &a, &post, &calls, StatusCode::OK).await;
        assert_eq!(lookup.1, Lookup::Bypass);
        assert_eq!(cache.entries(), 0);
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_changed_port_record_misses_and_expiry_refetches() {
        let cache = ResponseCache::new(Duration::from_millis(200));
        let calls = AtomicUsize::new(0);
        let a = identity("a", "10.0.0.5");
        let md = get("/openstack/latest/meta_data.json");
        answer(&cache, &a, &md, &calls, StatusCode::OK).await;
        // The same record re-published (a new snapshot) still hits.
        let mut same = a.clone();
        same.instance = Arc::new((*a.instance).clone());
        assert_eq!(
            answer(&cache, &same, &md, &calls, StatusCode::OK).await.1,
            Lookup::Hit
        );
        let mut renamed = a.clone();
        renamed.instance = record("a", "renamed");
        assert_eq!(
            answer(&cache, &renamed, &md, &calls, StatusCode::OK)
                .await
                .1,
            Lookup::Miss
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            answer(&cache, &renamed, &md, &calls, StatusCode::OK)
                .await
                .1,
            Lookup::Miss
        );
        cache.sweep();
        assert_eq!(cache.entries(), 1);
    }

    #[tokio::test]
    async fn identical_requests_in_flight_share_one_call() {
        let cache = Arc::new(ResponseCache::new(Duration::from_secs(15)));
        let calls = Arc::new(AtomicUsize::new(0));
        let a = identity("a", "10.0.0.5");
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (cache, calls, a) = (Arc::clone(&cache), Arc::clone(&calls), a.clone());
                tokio::spawn(async move {
                    let md = get("/openstack/latest/meta_data.json");
                    cache
                        .get_or_fetch(&a, &md, async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Reply::text("md".into())
                        })
                        .await
                        .1
                })
            })
            .collect();
        let mut lookups = Vec::new();
        for task in tasks {
            lookups.push(task.await.unwrap());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(lookups.iter().filter(|l| **l == Lookup::Miss).count(), 1);
        assert_eq!(
            lookups.iter().filter(|l| **l == Lookup::Collapsed).count(),
            9
        );
    }
}
