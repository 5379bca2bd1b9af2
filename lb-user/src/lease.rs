//! Elections through coordination.k8s.io/v1 Leases, as client-go's leaderelection
//! holds them, for many leases at once (one per LoadBalancer address, one for
//! address assignment):
//!
//! - a candidate takes a lease that is absent, released (no holder) or expired, by
//!   a create or by a replace carrying the resourceVersion it saw: the API server's
//!   compare-and-swap lets exactly one candidate win, the others get 409;
//! - expired means unchanged, as this candidate observed it, for the lease's
//!   `leaseDurationSeconds` (observed on its own clock: no clocks are compared);
//! - the holder renews every retry period, and counts itself the holder only until
//!   the start of its last successful renewal plus the duration less one retry
//!   period: past that, with the API out of reach, it steps down before anyone
//!   could have taken over; a lost compare-and-swap steps it down at once;
//! - a holder that no longer wants a lease (or stops) releases it, so the next
//!   candidate takes it at its next round.
//!
//! Leases are read from a watch (reflector) on the lease namespace, labelled
//! [`MANAGED_BY`], so rounds cost the API writes only. [`decide`] is the rule,
//! pure; [`Elector::round`] does the writes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt as _, future::join_all};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use tracing::{debug, info, warn};

/// The label lb's leases carry (and the watch selects).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "lb");

/// How long a lease lasts unrenewed, and how often it is renewed and looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Whole seconds (`leaseDurationSeconds`), at least 1.
    pub duration: Duration,
    pub retry: Duration,
}

impl Default for Timing {
    /// A crashed holder is replaced within duration + two retry periods (about
    /// 1.4 s); each held lease costs the API 5 writes a second.
    fn default() -> Self {
        Timing {
            duration: Duration::from_secs(1),
            retry: Duration::from_millis(200),
        }
    }
}

impl Timing {
    /// How long after the start of its last successful renewal a holder may still
    /// act: one retry period short of the duration, so it has stepped down before
    /// any other candidate can see the lease expire.
    pub fn hold_for(&self) -> Duration {
        self.duration.saturating_sub(self.retry)
    }
}

/// What a candidate saw of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its holder (None: released).
    pub holder: Option<String>,
    /// Its `leaseDurationSeconds`.
    pub duration: Duration,
    /// How long it has been unchanged, as this candidate observed.
    pub unchanged_for: Duration,
}

/// Which candidates take a free or expired lease at once (the others leave it one
/// more duration to them, so leases spread over the candidates): the first, or
/// the second when the first is the holder whose lease ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preferred {
    pub first: String,
    pub second: Option<String>,
}

impl Preferred {
    /// Whether `me` takes the lease at once, given what it saw of it.
    pub fn eager(pref: Option<&Preferred>, me: &str, seen: Option<&Seen>) -> bool {
        let Some(p) = pref else {
            return true;
        };
        let holder = seen.and_then(|s| s.holder.as_deref());
        p.first == me || (holder == Some(p.first.as_str()) && p.second.as_deref() == Some(me))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Renew,
    Take,
    Release,
    Wait,
}

/// What candidate `me` does with a lease this round. `holding`: it holds it by its
/// own books; `want`: it is a candidate; `eager`: it takes a free lease at once
/// (else it leaves it one more duration to the eager ones, so leases spread over
/// the candidates); `seen`: the lease (None: absent, unchanged for `absent_for`).
pub fn decide(
    me: &str,
    holding: bool,
    want: bool,
    eager: bool,
    seen: Option<&Seen>,
    absent_for: Duration,
    timing: &Timing,
) -> Step {
    if !want {
        return if holding { Step::Release } else { Step::Wait };
    }
    if holding {
        return Step::Renew;
    }
    let patience = |d: Duration| if eager { d } else { d * 2 };
    match seen {
        None if eager || absent_for > timing.duration * 2 => Step::Take,
        None => Step::Wait,
        Some(s) if s.holder.as_deref() == Some(me) => Step::Take,
        Some(s) if s.holder.is_none() => {
            if eager || s.unchanged_for > s.duration {
                Step::Take
            } else {
                Step::Wait
            }
        }
        Some(s) if s.unchanged_for > patience(s.duration) => Step::Take,
        Some(_) => Step::Wait,
    }
}

/// What an elector did, for metrics.
#[derive(Debug, Default)]
pub struct LeaseStats {
    /// Leases held now.
    pub held: AtomicU64,
    /// Leases taken (created, or taken over from a holder that let it lapse or
    /// released it).
    pub taken: AtomicU64,
    /// Leases released (no longer wanted, or on a clean stop).
    pub released: AtomicU64,
    /// Leases stepped down from: renewals failed until the deadline, or another
    /// candidate's write came first.
    pub lost: AtomicU64,
    /// Writes that failed or timed out (409s excepted).
    pub failed_writes: AtomicU64,
}

/// Retries of the lease watch: 200 ms, doubling, at most 1 s (kube-runtime's
/// default grows to 30 s, and a cache that stale after an API outage would keep
/// candidates from seeing a lapsed holder for as long).
#[derive(Default)]
struct WatchBackoff(u32);

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = Duration::from_millis(200) * 2u32.pow(self.0.min(3));
        self.0 += 1;
        Some(d.min(Duration::from_secs(1)))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.0 = 0;
    }
}

struct Held {
    /// The resourceVersion of this candidate's last write.
    lease: Lease,
    /// When the last successful write started.
    renewed: Instant,
}

/// Many leases of one namespace, contended for by one candidate.
pub struct Elector {
    api: Api<Lease>,
    cache: reflector::Store<Lease>,
    me: String,
    timing: Timing,
    /// name -> (resourceVersion observed, when it was first observed; None: absent).
    observed: HashMap<String, (Option<String>, Instant)>,
    held: BTreeMap<String, Held>,
    /// Leases read directly after a lost compare-and-swap, while the watch still
    /// shows the version it showed then (name -> (lease, that version)).
    fresh: HashMap<String, (Arc<Lease>, Option<String>)>,
    stats: Arc<LeaseStats>,
}

fn now_micro() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    /// Starts watching lb's leases in `namespace` (the watch retries with backoff).
    pub fn start(
        client: Client,
        namespace: &str,
        me: &str,
        timing: Timing,
        stats: Arc<LeaseStats>,
    ) -> Self {
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let (cache, writer) = reflector::store();
        let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let stream = reflector(
            writer,
            watcher(api.clone(), watcher::Config::default().labels(&selector)),
        )
        .backoff(WatchBackoff::default());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                if let Err(e) = ev {
                    debug!(error = %e, "lease watch failed; retrying with backoff");
                }
            }
        });
        Elector {
            api,
            cache,
            me: me.to_string(),
            timing,
            observed: HashMap::new(),
            held: BTreeMap::new(),
            fresh: HashMap::new(),
            stats,
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The leases held now (by this candidate's books).
    pub fn held(&self) -> BTreeSet<String> {
        self.held.keys().cloned().collect()
    }

    /// Until when this candidate counts itself `name`'s holder (None: it does not).
    pub fn deadline(&self, name: &str) -> Option<Instant> {
        self.held
            .get(name)
            .map(|h| h.renewed + self.timing.hold_for())
    }

    /// When the first held lease runs out unless renewed.
    pub fn first_deadline(&self) -> Option<Instant> {
        self.held
            .values()
            .map(|h| h.renewed + self.timing.hold_for())
            .min()
    }

    /// Steps down from leases whose time ran out.
    fn expire(&mut self) {
        let now = Instant::now();
        let hold_for = self.timing.hold_for();
        let stats = &self.stats;
        self.held.retain(|name, h| {
            let keep = now < h.renewed + hold_for;
            if !keep {
                warn!(lease = %name, "lease not renewed in time: stepping down");
                stats.lost.fetch_add(1, Ordering::Relaxed);
            }
            keep
        });
        stats.held.store(self.held.len() as u64, Ordering::Relaxed);
    }

    /// Notes what the watch shows of `name`; returns it and how long it has been
    /// as it is.
    /// Lease `name` as the watch shows it.
    fn cached(&self, name: &str) -> Option<Arc<Lease>> {
        self.cache
            .get(&reflector::ObjectRef::new(name).within(self.api_namespace()))
    }

    /// The latest known version of lease `name`: the watch's, unless a direct read
    /// after a lost compare-and-swap is newer than what the watch shows.
    fn current(&self, name: &str) -> Option<Arc<Lease>> {
        let cached = self.cached(name);
        match self.fresh.get(name) {
            Some((lease, stale))
                if cached
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone())
                    == *stale =>
            {
                Some(lease.clone())
            }
            _ => cached,
        }
    }

    fn observe(&mut self, name: &str, now: Instant) -> (Option<Seen>, Duration) {
        let lease = self.current(name);
        if let Some((_, stale)) = self.fresh.get(name)
            && self
                .cached(name)
                .and_then(|l| l.metadata.resource_version.clone())
                != *stale
        {
            self.fresh.remove(name);
        }
        let rv = lease
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone());
        let entry = self
            .observed
            .entry(name.to_string())
            .or_insert_with(|| (rv.clone(), now));
        if entry.0 != rv {
            *entry = (rv, now);
        }
        let unchanged_for = now - entry.1;
        let seen = lease.map(|l| {
            let spec = l.spec.clone().unwrap_or_default();
            Seen {
                holder: spec.holder_identity.filter(|h| !h.is_empty()),
                duration: Duration::from_secs(
                    spec.lease_duration_seconds.unwrap_or(1).max(1) as u64
                ),
                unchanged_for,
            }
        });
        (seen, unchanged_for)
    }

    fn api_namespace(&self) -> &str {
        self.api.namespace().unwrap_or("default")
    }

    /// The lease to write for `step` on `name`.
    fn next_lease(&self, name: &str, step: Step) -> Lease {
        let secs = self.timing.duration.as_secs().max(1) as i32;
        if let Some(h) = self.held.get(name) {
            let mut l = h.lease.clone();
            let spec = l.spec.get_or_insert_with(Default::default);
            if step == Step::Release {
                spec.holder_identity = None;
            }
            spec.renew_time = Some(now_micro());
            return l;
        }
        let mut lease = self
            .current(name)
            .map(|l| Lease::clone(&l))
            .unwrap_or_else(|| Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(self.api_namespace().to_string()),
                    labels: Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into()),
                    ..Default::default()
                },
                spec: None,
            });
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let was = spec.holder_identity.clone();
        if was.as_deref() != Some(self.me.as_str()) {
            spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0) + i32::from(was.is_some()));
            spec.acquire_time = Some(now_micro());
        }
        spec.holder_identity = Some(self.me.clone());
        spec.lease_duration_seconds = Some(secs);
        spec.renew_time = Some(now_micro());
        lease
    }

    /// One round: contends for `wants` (lease name -> who is preferred; None: no
    /// one) and lets go of the leases no longer wanted. Returns the leases held
    /// after it.
    pub async fn round(&mut self, wants: &BTreeMap<String, Option<Preferred>>) -> BTreeSet<String> {
        self.expire();
        let now = Instant::now();
        let names: BTreeSet<String> = wants.keys().chain(self.held.keys()).cloned().collect();
        // What is no longer contended for is forgotten (observed anew if it is).
        self.observed.retain(|n, _| names.contains(n));
        let mut writes = Vec::new();
        for name in names {
            let (seen, unchanged) = self.observe(&name, now);
            let want = wants.contains_key(&name);
            let eager = wants
                .get(&name)
                .is_some_and(|p| Preferred::eager(p.as_ref(), &self.me, seen.as_ref()));
            let holding = self.held.contains_key(&name);
            let step = decide(
                &self.me,
                holding,
                want,
                eager,
                seen.as_ref(),
                unchanged,
                &self.timing,
            );
            if step == Step::Wait {
                continue;
            }
            let lease = self.next_lease(&name, step);
            let create = lease.metadata.resource_version.is_none();
            writes.push((name, step, lease, create));
        }
        if writes.is_empty() {
            return self.held();
        }
        // No write may outlive a held lease's deadline (it is checked after them).
        let limit = self.first_deadline().map_or(self.timing.retry * 2, |d| {
            d.saturating_duration_since(Instant::now())
                .min(self.timing.retry * 2)
        });
        let started = Instant::now();
        let api = &self.api;
        let results = join_all(writes.iter().map(|(name, _, lease, create)| async move {
            let pp = PostParams::default();
            let call = async {
                if *create {
                    api.create(&pp, lease).await
                } else {
                    api.replace(name, &pp, lease).await
                }
            };
            tokio::time::timeout(limit, call).await
        }))
        .await;
        for ((name, step, _, _), result) in writes.into_iter().zip(results) {
            match result {
                Ok(Ok(lease)) if step == Step::Release => {
                    self.held.remove(&name);
                    self.note_write(&name, &lease);
                    self.stats.released.fetch_add(1, Ordering::Relaxed);
                    info!(lease = %name, "lease released");
                }
                Ok(Ok(lease)) => {
                    if step == Step::Take {
                        self.stats.taken.fetch_add(1, Ordering::Relaxed);
                        info!(lease = %name, holder = %self.me, "lease taken");
                    }
                    self.note_write(&name, &lease);
                    self.held.insert(
                        name,
                        Held {
                            lease,
                            renewed: started,
                        },
                    );
                }
                Ok(Err(e)) if is_conflict(&e) => {
                    // Someone else wrote first: not ours (any more). Its write counts
                    // as a change seen now.
                    if self.held.remove(&name).is_some() {
                        self.stats.lost.fetch_add(1, Ordering::Relaxed);
                        warn!(lease = %name, "lease lost to another holder");
                    }
                    if let Some(o) = self.observed.get_mut(&name) {
                        o.1 = Instant::now();
                    }
                    self.refresh(&name).await;
                }
                Ok(Err(e)) => {
                    self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
                    debug!(lease = %name, error = %e, "lease write failed");
                }
                Err(_) => {
                    self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
                    debug!(lease = %name, "lease write timed out");
                }
            }
        }
        self.expire();
        self.held()
    }

    /// Reads lease `name` now (the watch may lag after an outage), so the next
    /// round decides on what the API holds.
    async fn refresh(&mut self, name: &str) {
        let stale = self
            .cached(name)
            .and_then(|l| l.metadata.resource_version.clone());
        if let Ok(Ok(lease)) = tokio::time::timeout(self.timing.retry, self.api.get(name)).await {
            self.note_write(name, &lease);
            self.fresh
                .insert(name.to_string(), (Arc::new(lease), stale));
        }
    }

    fn note_write(&mut self, name: &str, lease: &Lease) {
        self.observed.insert(
            name.to_string(),
            (lease.metadata.resource_version.clone(), Instant::now()),
        );
    }

    /// Releases every held lease (on a clean stop), within one retry period.
    pub async fn release_all(&mut self) {
        let none = BTreeMap::new();
        let _ = tokio::time::timeout(self.timing.retry * 2, self.round(&none)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        duration: Duration::from_secs(1),
        retry: Duration::from_millis(200),
    };

    fn seen(holder: Option<&str>, ms: u64) -> Seen {
        Seen {
            holder: holder.map(str::to_string),
            duration: Duration::from_secs(1),
            unchanged_for: Duration::from_millis(ms),
        }
    }

    fn step(holding: bool, want: bool, eager: bool, s: Option<Seen>, absent_ms: u64) -> Step {
        decide(
            "me",
            holding,
            want,
            eager,
            s.as_ref(),
            Duration::from_millis(absent_ms),
            &T,
        )
    }

    #[test]
    fn a_held_lease_is_renewed_and_released_when_no_longer_wanted() {
        assert_eq!(
            step(true, true, false, Some(seen(Some("me"), 0)), 0),
            Step::Renew
        );
        assert_eq!(
            step(true, false, false, Some(seen(Some("me"), 0)), 0),
            Step::Release
        );
        assert_eq!(step(false, false, true, None, 5000), Step::Wait);
    }

    #[test]
    fn another_holders_lease_is_taken_only_once_it_expired() {
        let live = Some(seen(Some("other"), 900));
        assert_eq!(step(false, true, true, live, 0), Step::Wait);
        assert_eq!(
            step(false, true, true, Some(seen(Some("other"), 1001)), 0),
            Step::Take
        );
        // The not-preferred wait one more duration for the preferred one.
        assert_eq!(
            step(false, true, false, Some(seen(Some("other"), 1500)), 0),
            Step::Wait
        );
        assert_eq!(
            step(false, true, false, Some(seen(Some("other"), 2001)), 0),
            Step::Take
        );
    }

    #[test]
    fn free_absent_and_own_leases() {
        assert_eq!(step(false, true, true, None, 0), Step::Take);
        assert_eq!(step(false, true, false, None, 100), Step::Wait);
        assert_eq!(step(false, true, false, None, 2100), Step::Take);
        assert_eq!(step(false, true, true, Some(seen(None, 0)), 0), Step::Take);
        assert_eq!(
            step(false, true, false, Some(seen(None, 500)), 0),
            Step::Wait
        );
        // A lease that names this candidate (after a restart, or after it stepped
        // down while the API was away) is taken back with a compare-and-swap.
        assert_eq!(
            step(false, true, false, Some(seen(Some("me"), 0)), 0),
            Step::Take
        );
    }

    #[test]
    fn the_preferred_node_is_eager_or_the_next_one_when_it_is_the_lapsed_holder() {
        let p = Preferred {
            first: "a".into(),
            second: Some("b".into()),
        };
        let held_by = |h: &str| Some(seen(Some(h), 1500));
        assert!(Preferred::eager(Some(&p), "a", None));
        assert!(!Preferred::eager(Some(&p), "b", None));
        assert!(!Preferred::eager(Some(&p), "b", held_by("c").as_ref()));
        assert!(Preferred::eager(Some(&p), "b", held_by("a").as_ref()));
        assert!(!Preferred::eager(Some(&p), "c", held_by("a").as_ref()));
        assert!(Preferred::eager(None, "c", None));
    }

    #[test]
    fn the_lease_watch_retries_within_a_second() {
        use kube::runtime::utils::Backoff as _;
        let mut b = WatchBackoff::default();
        let ms: Vec<u128> = b.by_ref().take(5).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(200)));
    }

    #[test]
    fn a_holder_steps_down_before_anyone_sees_its_lease_expire() {
        // The holder counts from the start of its write; others from when they saw
        // the write's result, which is later: a retry period's margin remains.
        assert!(T.hold_for() + T.retry <= T.duration);
        assert_eq!(Timing::default(), T);
    }
}
