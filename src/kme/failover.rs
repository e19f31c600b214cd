//! KME failover: one [`KeySource`] over the nodes of one redundant KME (`kme.url` lists
//! several URLs), which share one key store. (Over 500 lines only for its unit tests,
//! which fake the nodes' answers.)
//!
//! Every request goes to the nodes in configured order, skipping nodes that failed within
//! the last probe interval. Only failures another node can do better on move on to the next
//! node: unreachable (refused, timed out, closed), a TLS handshake failure, a 5xx other than
//! "no key available". "No key available" and other refusals are answers of the shared key
//! store and would be the same at every node, so they are returned at once.
//!
//! A node that failed is "down" and skipped; once the probe interval has passed, the next
//! request tries it again first, one request at a time. With buffers (`buffer` > 0) that is
//! almost always the refill thread's, since exchanges take their keys from the buffers; with
//! `buffer = 0` an exchange pays for the probe, bounded as follows. Every node but the last
//! of a request gets at most half of the time left before the caller's deadline, so a node
//! that hangs leaves the next one a real chance within the exchange. Keys obtained through one node can be fetched (dec_keys) through another:
//! the key store is shared.
//!
//! A dec_keys whose answer was lost after the connection was up (a node too slow, or one
//! that closed the connection) is not repeated at the next node: the first node may have
//! delivered the keys, which a KME hands out once, so the next node would only answer
//! "unknown key ID" and the operator would read the wrong cause. The node counts as down
//! and the next request goes elsewhere. An enc_keys is repeated: it asks for new keys, and
//! what the slow node may have delivered is one set lost, not a failed exchange.

use super::{KeyId, KeySource, KmeError, QkdKey, SaeId};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// How long a node that failed is skipped before a request tries it again.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// What `qkdctl` shows of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// The node requests go to.
    Active,
    /// Reachable when last asked (or never asked), not in use.
    Standby,
    /// Failed, since then, and not answered again.
    Down { since: SystemTime },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub url: String,
    pub role: NodeRole,
}

#[derive(Default)]
struct Health {
    down_since: Option<SystemTime>,
    last_failure: Option<Instant>,
    /// A request is trying this down node right now: the others skip it.
    probing: bool,
}

struct State {
    active: usize,
    health: Vec<Health>,
}

/// One attempt of a request: which node, and whether it is the probe of a down node.
#[derive(Clone, Copy)]
struct Attempt {
    node: usize,
    probe: bool,
}

pub struct FailoverSource {
    nodes: Vec<Arc<dyn KeySource>>,
    probe_interval: Duration,
    state: Mutex<State>,
}

/// Whether another node of the same KME may succeed where this one failed.
fn fails_over(error: &KmeError) -> bool {
    match error {
        KmeError::Unreachable { .. } | KmeError::Tls { .. } => true,
        KmeError::Rejected { status, .. } => *status >= 500,
        KmeError::NoKeyAvailable { .. } | KmeError::Protocol(_) | KmeError::Config(_) => false,
    }
}

impl FailoverSource {
    /// `nodes` in the order they are tried (at least one); the first is active at start.
    pub fn new(nodes: Vec<Arc<dyn KeySource>>, probe_interval: Duration) -> FailoverSource {
        assert!(!nodes.is_empty(), "a KME has at least one node");
        let health = nodes.iter().map(|_| Health::default()).collect();
        FailoverSource {
            nodes,
            probe_interval,
            state: Mutex::new(State { active: 0, health }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: keep using it.
        crate::health::lock("a KME's node failover state", &self.state)
    }

    /// The nodes to try now, in order: every node that is up, and down nodes whose probe
    /// interval has passed (marked as being probed). When every node is down and waiting,
    /// all of them: there is nothing better to try.
    fn attempts(&self) -> Vec<Attempt> {
        let mut state = self.lock();
        let now = Instant::now();
        let mut attempts = Vec::new();
        for (node, health) in state.health.iter_mut().enumerate() {
            if health.down_since.is_none() {
                attempts.push(Attempt { node, probe: false });
            } else if !health.probing
                && health
                    .last_failure
                    .is_none_or(|at| now.duration_since(at) >= self.probe_interval)
            {
                health.probing = true;
                attempts.push(Attempt { node, probe: true });
            }
        }
        if attempts.is_empty() {
            attempts = (0..self.nodes.len())
                .map(|node| Attempt { node, probe: false })
                .collect();
        }
        attempts
    }

    /// Runs `request` on the nodes in turn until one answers (see the module doc).
    /// `proves_reachable`: an answer shows that the node is up. Not so for keys_per_set,
    /// which a client answers from its cached status: such an answer changes no state.
    /// `repeatable`: the request may go to the next node after a node may have served it.
    fn request<T>(
        &self,
        sae: &SaeId,
        deadline: Instant,
        proves_reachable: bool,
        repeatable: bool,
        request: impl Fn(&dyn KeySource, Instant) -> Result<T, KmeError>,
    ) -> Result<T, KmeError> {
        let attempts = self.attempts();
        let mut failures: Vec<(usize, KmeError)> = Vec::new();
        for (index, attempt) in attempts.iter().enumerate() {
            let now = Instant::now();
            if index > 0 && now >= deadline {
                // No time left is not the next node's fault: leave its state alone.
                self.release(&attempts[index..]);
                break;
            }
            let until = if index + 1 < attempts.len() {
                now + deadline.saturating_duration_since(now) / 2
            } else {
                deadline
            };
            match request(&*self.nodes[attempt.node], until) {
                Err(e) if fails_over(&e) => {
                    self.failed(*attempt);
                    if let (false, Some(next)) = (repeatable, attempts.get(index + 1)) {
                        if let KmeError::Unreachable {
                            url,
                            reason,
                            maybe_served: true,
                        } = e
                        {
                            self.release(&attempts[index + 1..]);
                            let next = self.nodes[next.node].url();
                            return Err(KmeError::Unreachable {
                                url,
                                reason: format!(
                                    "{reason}; not asked of {next} instead: this node may have \
                                     delivered the keys, which the KME hands out once; the next \
                                     request goes to {next}"
                                ),
                                maybe_served: true,
                            });
                        }
                    }
                    failures.push((attempt.node, e));
                }
                answer if proves_reachable => {
                    self.release(&attempts[index + 1..]);
                    self.reached(attempt.node, sae, &failures);
                    return answer;
                }
                answer => {
                    self.release(&attempts[index..]);
                    return answer;
                }
            }
        }
        Err(failures
            .pop()
            .map(|(_, e)| e)
            .expect("at least one node was tried"))
    }

    fn failed(&self, attempt: Attempt) {
        let mut state = self.lock();
        let health = &mut state.health[attempt.node];
        health.down_since.get_or_insert_with(SystemTime::now);
        health.last_failure = Some(Instant::now());
        if attempt.probe {
            health.probing = false;
        }
    }

    /// Attempts a request did not make: their probes are free for the next request.
    fn release(&self, skipped: &[Attempt]) {
        let mut state = self.lock();
        for attempt in skipped.iter().filter(|a| a.probe) {
            state.health[attempt.node].probing = false;
        }
    }

    /// `node` answered (keys or an answer of the key store): it is up and in use. Logs the
    /// transition if it was not in use before, with why the previous node was left.
    fn reached(&self, node: usize, sae: &SaeId, failures: &[(usize, KmeError)]) {
        let mut state = self.lock();
        state.health[node] = Health::default();
        let previous = state.active;
        if previous == node {
            return;
        }
        state.active = node;
        drop(state);
        let (url, was, count) = (
            self.nodes[node].url(),
            self.nodes[previous].url(),
            self.nodes.len(),
        );
        if node > previous {
            let why = failures
                .iter()
                .find(|(n, _)| *n == previous)
                .or(failures.last())
                .map_or_else(
                    || format!("KME {was} is down"),
                    |(_, e)| left_because(was, e),
                );
            log::warn!(
                "qkd: {why}: using {url} (node {} of {count}) for SAE '{sae}'",
                node + 1
            );
        } else {
            log::info!(
                "qkd: KME {url} (node {} of {count}) answers again: using it instead of {was} for SAE '{sae}'",
                node + 1
            );
        }
    }
}

/// Why the node at `url` was left, for the WARNING line (the error names the endpoint; the
/// operator configured the base URL).
fn left_because(url: &str, error: &KmeError) -> String {
    match error {
        KmeError::Unreachable { reason, .. } => format!("KME {url} unreachable ({reason})"),
        KmeError::Tls { reason, .. } => format!("KME {url}: {reason}"),
        other => other.to_string(),
    }
}

impl KeySource for FailoverSource {
    fn enc_keys(
        &self,
        slave: &SaeId,
        size_bits: u32,
        sets: usize,
        deadline: Instant,
    ) -> Result<Vec<Vec<QkdKey>>, KmeError> {
        self.request(slave, deadline, true, true, |node, until| {
            node.enc_keys(slave, size_bits, sets, until)
        })
    }

    fn dec_keys(
        &self,
        master: &SaeId,
        ids: &[KeyId],
        deadline: Instant,
    ) -> Result<Vec<QkdKey>, KmeError> {
        self.request(master, deadline, true, false, |node, until| {
            node.dec_keys(master, ids, until)
        })
    }

    fn keys_per_set(
        &self,
        peer: &SaeId,
        size_bits: u32,
        deadline: Instant,
    ) -> Result<usize, KmeError> {
        self.request(peer, deadline, false, true, |node, until| {
            node.keys_per_set(peer, size_bits, until)
        })
    }

    /// What the active node knows.
    fn known_keys_per_set(&self, peer: &SaeId, size_bits: u32) -> Option<usize> {
        let active = self.lock().active;
        self.nodes[active].known_keys_per_set(peer, size_bits)
    }

    /// The active node's URL.
    fn url(&self) -> &str {
        let active = self.lock().active;
        self.nodes[active].url()
    }

    fn nodes(&self) -> Vec<NodeState> {
        let state = self.lock();
        self.nodes
            .iter()
            .zip(&state.health)
            .enumerate()
            .map(|(index, (node, health))| NodeState {
                url: node.url().to_owned(),
                role: match health.down_since {
                    Some(since) => NodeRole::Down { since },
                    None if index == state.active => NodeRole::Active,
                    None => NodeRole::Standby,
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use zeroize::Zeroizing;

    /// How a fake node answers.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Mode {
        Up,
        Unreachable,
        /// Connected, then no answer: the node may have served the request.
        AnswerLost,
        NoKey,
        Http(u16),
    }

    struct Node {
        url: &'static str,
        mode: Mutex<Mode>,
        calls: AtomicUsize,
        deadlines: Mutex<Vec<Instant>>,
    }

    impl Node {
        fn new(url: &'static str) -> Arc<Node> {
            Arc::new(Node {
                url,
                mode: Mutex::new(Mode::Up),
                calls: AtomicUsize::new(0),
                deadlines: Mutex::new(Vec::new()),
            })
        }

        fn set(&self, mode: Mode) {
            *self.mode.lock().unwrap() = mode;
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        fn answer(&self, deadline: Instant) -> Result<Vec<QkdKey>, KmeError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.deadlines.lock().unwrap().push(deadline);
            let url = self.url.to_owned();
            match *self.mode.lock().unwrap() {
                Mode::Up => Ok(vec![QkdKey {
                    id: KeyId([1; 16]),
                    material: Zeroizing::new(vec![0; 32]),
                }]),
                Mode::Unreachable => Err(KmeError::Unreachable {
                    url,
                    reason: "connection refused".into(),
                    maybe_served: false,
                }),
                Mode::AnswerLost => Err(KmeError::Unreachable {
                    url,
                    reason: "no complete answer within 5s (kme.timeout)".into(),
                    maybe_served: true,
                }),
                Mode::NoKey => Err(KmeError::NoKeyAvailable {
                    url,
                    message: "503: no key".into(),
                }),
                Mode::Http(status) => Err(KmeError::Rejected {
                    url,
                    status,
                    message: "error".into(),
                }),
            }
        }
    }

    impl KeySource for Node {
        fn enc_keys(
            &self,
            _: &SaeId,
            _: u32,
            _: usize,
            deadline: Instant,
        ) -> Result<Vec<Vec<QkdKey>>, KmeError> {
            self.answer(deadline).map(|keys| vec![keys])
        }
        fn dec_keys(
            &self,
            _: &SaeId,
            _: &[KeyId],
            deadline: Instant,
        ) -> Result<Vec<QkdKey>, KmeError> {
            self.answer(deadline)
        }
        fn keys_per_set(&self, _: &SaeId, _: u32, deadline: Instant) -> Result<usize, KmeError> {
            self.answer(deadline).map(|keys| keys.len())
        }
        fn url(&self) -> &str {
            self.url
        }
    }

    fn pair(probe_interval: Duration) -> (FailoverSource, Arc<Node>, Arc<Node>) {
        let (a, b) = (Node::new("https://a:8443"), Node::new("https://b:8443"));
        let source = FailoverSource::new(vec![a.clone(), b.clone()], probe_interval);
        (source, a, b)
    }

    fn sae() -> SaeId {
        SaeId::new("sae-b").unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn enc(source: &FailoverSource) -> Result<Vec<Vec<QkdKey>>, KmeError> {
        source.enc_keys(&sae(), 256, 1, soon())
    }

    fn roles(source: &FailoverSource) -> Vec<&'static str> {
        source
            .nodes()
            .iter()
            .map(|n| match n.role {
                NodeRole::Active => "active",
                NodeRole::Standby => "standby",
                NodeRole::Down { .. } => "down",
            })
            .collect()
    }

    #[test]
    fn the_first_node_serves_while_it_answers() {
        let (source, a, b) = pair(PROBE_INTERVAL);
        for _ in 0..3 {
            enc(&source).unwrap();
        }
        assert_eq!((a.calls(), b.calls()), (3, 0));
        assert_eq!(source.url(), "https://a:8443");
        assert_eq!(roles(&source), ["active", "standby"]);
    }

    #[test]
    fn an_unreachable_node_is_left_and_skipped_while_down() {
        let (source, a, b) = pair(Duration::from_secs(3600));
        a.set(Mode::Unreachable);
        enc(&source).unwrap();
        assert_eq!((a.calls(), b.calls()), (1, 1));
        assert_eq!(source.url(), "https://b:8443");
        assert_eq!(roles(&source), ["down", "active"]);
        // Within the probe interval the down node is not asked again, by any operation.
        source.dec_keys(&sae(), &[KeyId([1; 16])], soon()).unwrap();
        source.keys_per_set(&sae(), 256, soon()).unwrap();
        assert_eq!((a.calls(), b.calls()), (1, 3));
    }

    #[test]
    fn the_first_node_is_probed_and_used_again_when_it_answers() {
        let (source, a, b) = pair(Duration::ZERO);
        a.set(Mode::Unreachable);
        enc(&source).unwrap();
        // Probed again (interval passed), still down: the request still gets its keys.
        enc(&source).unwrap();
        assert_eq!((a.calls(), b.calls()), (2, 2));
        assert_eq!(roles(&source), ["down", "active"]);
        a.set(Mode::Up);
        enc(&source).unwrap();
        assert_eq!((a.calls(), b.calls()), (3, 2));
        assert_eq!(source.url(), "https://a:8443");
        assert_eq!(roles(&source), ["active", "standby"]);
    }

    #[test]
    fn a_cached_answer_does_not_bring_a_down_node_back() {
        let (source, a, b) = pair(Duration::ZERO);
        a.set(Mode::Unreachable);
        enc(&source).unwrap();
        // keys_per_set may come from a client's cached status even while its node is down:
        // answered by the probed node 1, it must not make node 1 active again.
        a.set(Mode::Up);
        source.keys_per_set(&sae(), 256, soon()).unwrap();
        assert_eq!(source.url(), "https://b:8443");
        assert_eq!(roles(&source), ["down", "active"]);
        // The probe slot was given back: the next real request probes node 1.
        enc(&source).unwrap();
        assert_eq!(source.url(), "https://a:8443");
        assert_eq!((a.calls(), b.calls()), (3, 1));
    }

    #[test]
    fn answers_of_the_shared_key_store_are_not_asked_of_the_next_node() {
        for mode in [
            Mode::NoKey,
            Mode::Http(400),
            Mode::Http(401),
            Mode::Http(404),
        ] {
            let (source, a, b) = pair(PROBE_INTERVAL);
            a.set(mode);
            assert!(enc(&source).is_err(), "{mode:?}");
            assert_eq!((a.calls(), b.calls()), (1, 0), "{mode:?}");
            assert_eq!(roles(&source), ["active", "standby"], "{mode:?}");
        }
        for mode in [Mode::Http(500), Mode::Http(502), Mode::Unreachable] {
            let (source, a, b) = pair(PROBE_INTERVAL);
            a.set(mode);
            enc(&source).unwrap();
            assert_eq!((a.calls(), b.calls()), (1, 1), "{mode:?}");
        }
    }

    #[test]
    fn keys_a_node_may_have_delivered_are_not_asked_of_the_next_node() {
        let (source, a, b) = pair(PROBE_INTERVAL);
        a.set(Mode::AnswerLost);
        let err = source
            .dec_keys(&sae(), &[KeyId([1; 16])], soon())
            .unwrap_err();
        assert_eq!((a.calls(), b.calls()), (1, 0));
        assert!(
            err.to_string()
                .contains("not asked of https://b:8443 instead: this node may have delivered"),
            "{err}"
        );
        assert!(err.is_transient());
        // The node counts as down: the next request goes to the other one.
        assert_eq!(roles(&source), ["down", "standby"]);
        source.dec_keys(&sae(), &[KeyId([2; 16])], soon()).unwrap();
        assert_eq!((a.calls(), b.calls()), (1, 1));
        // New keys may be asked of the next node: nothing delivered is asked for twice.
        let (source, a, b) = pair(PROBE_INTERVAL);
        a.set(Mode::AnswerLost);
        enc(&source).unwrap();
        assert_eq!((a.calls(), b.calls()), (1, 1));
        // A node that refused the connection never saw the request: failed over at once.
        let (source, a, b) = pair(PROBE_INTERVAL);
        a.set(Mode::Unreachable);
        source.dec_keys(&sae(), &[KeyId([1; 16])], soon()).unwrap();
        assert_eq!((a.calls(), b.calls()), (1, 1));
    }

    #[test]
    fn every_node_down_returns_the_last_error_and_tries_them_all_again() {
        let (source, a, b) = pair(Duration::from_secs(3600));
        a.set(Mode::Unreachable);
        b.set(Mode::Http(502));
        let err = enc(&source).unwrap_err();
        assert!(
            matches!(err, KmeError::Rejected { status: 502, .. }),
            "{err:?}"
        );
        assert_eq!(roles(&source), ["down", "down"]);
        // Nothing better to try than every node, in order.
        b.set(Mode::Up);
        enc(&source).unwrap();
        assert_eq!((a.calls(), b.calls()), (2, 2));
        assert_eq!(roles(&source), ["down", "active"]);
    }

    #[test]
    fn a_node_with_a_next_one_gets_at_most_half_of_the_time_left() {
        let (source, a, b) = pair(PROBE_INTERVAL);
        a.set(Mode::Unreachable);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(4);
        source.enc_keys(&sae(), 256, 1, deadline).unwrap();
        let first = a.deadlines.lock().unwrap()[0];
        // Half of what was left when node 1 was asked (at start or a moment later).
        let half = start + Duration::from_secs(2);
        assert!(first >= half && first < half + Duration::from_millis(100));
        assert_eq!(b.deadlines.lock().unwrap()[0], deadline);
    }

    #[test]
    fn a_probe_in_flight_is_not_repeated_by_other_requests() {
        let (source, a, b) = pair(Duration::ZERO);
        a.set(Mode::Unreachable);
        enc(&source).unwrap();
        // Another thread is probing node 1: this request goes straight to node 2.
        let attempts = source.attempts();
        assert!(attempts[0].probe && attempts[0].node == 0);
        enc(&source).unwrap();
        assert_eq!((a.calls(), b.calls()), (1, 2));
        source.release(&attempts);
        enc(&source).unwrap();
        assert_eq!((a.calls(), b.calls()), (2, 3));
    }
}
