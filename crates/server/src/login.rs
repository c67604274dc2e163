//! Failed-login throttling for the user API's Basic authentication.
//!
//! Design decisions:
//! * **Refuse, don't sleep.** A throttled attempt is answered at once with `429 Too Many
//!   Requests`, `Retry-After: <seconds>` and `{"error": ...}`, without checking its key (a
//!   correct key is refused too while the block lasts, or the block would not slow guessing
//!   down). Holding the connection open instead would let an attacker tie up the server's
//!   sockets and tasks for free; a 429 costs nothing, and the Docker Cloud contract lists
//!   429 as "throttled".
//! * **Three counters**, each forgetting its failures [`Limits::window`] after the last one:
//!   1. per *(client, username)*: after [`Limits::free_failures`] (5) failures, each further
//!      failure blocks that pair for a delay doubling from [`Limits::first_delay`] (1 s) up to
//!      [`Limits::max_delay`] (5 min). A success resets the pair. This is the one a key
//!      guesser meets, and it slows only the guesser's address.
//!   2. per *client* over every username (password spraying from one address), with a higher
//!      allowance ([`Limits::client_free_failures`], 20). A success does not reset it: one
//!      valid account must not buy unlimited guesses at the others.
//!   3. per *username* over every client (guessing from many addresses), with a much higher
//!      allowance ([`Limits::user_free_failures`], 100), counted only for users that exist.
//!      So that an attacker cannot lock a user out from the outside, a client that logged in
//!      successfully as that user within [`Limits::trust`] (a day) is exempt from this
//!      counter (not from the other two): the legitimate user's usual addresses keep working,
//!      and only a *new* address of that user is slowed during an attack.
//! * **Clients** are the connection's peer address; an IPv6 client is its /64 prefix, which
//!   is what one subscriber usually gets, so rotating addresses inside it does not help.
//!   `X-Forwarded-For` is not trusted (anyone can send it). Behind a reverse proxy every
//!   client is the proxy, so counters 1 and 2 then apply to everyone together; run the proxy
//!   with its own rate limiting, or expose the server directly.
//! * **Bounded memory.** Each map holds at most [`Limits::max_tracked`] entries. When one is
//!   full, expired entries are dropped first, then the entry idle for longest; usernames are
//!   tracked only if the user exists, so random names cannot flush the per-user counter, and
//!   are held as their SHA-256, so a long name costs no more than a short one.
//!   The worst case is a few MB, and the scan to make room is linear only when a map is full.
//! * **Every way of signing in shares it** (issue #15): Basic with any of a user's API keys
//!   or its argon2 password, and the dashboard's login, all go through [`LoginThrottle::check`]
//!   before the secret is looked at, with the same three counters — so a password, the one
//!   guessable secret, gets per-address, per-(address, user) and per-user limits, and a
//!   failure costs the guesser one argon2 verification besides (`app::access`). A removed
//!   user counts as unknown (not per user), like a name that never existed.
//! * Time comes from the caller ([`Instant`]), so the logic is unit-tested without sleeping.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The knobs of [`LoginThrottle`]; [`Limits::default`] is what the server uses.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failures of one (client, username) pair before it is slowed down.
    pub free_failures: u32,
    /// Failures of one client, over all usernames, before it is slowed down.
    pub client_free_failures: u32,
    /// Failures for one existing username, over all clients, before it is slowed down.
    pub user_free_failures: u32,
    /// Failures are forgotten this long after the last one.
    pub window: Duration,
    /// The first delay; each further failure doubles it.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// How long a successful login exempts its client from the per-username counter.
    pub trust: Duration,
    /// Entries per map.
    pub max_tracked: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            free_failures: 5,
            client_free_failures: 20,
            user_free_failures: 100,
            window: Duration::from_secs(15 * 60),
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5 * 60),
            trust: Duration::from_secs(24 * 60 * 60),
            max_tracked: 10_000,
        }
    }
}

/// A client as the throttle counts it: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    V4([u8; 4]),
    V6([u8; 8]),
    /// No peer address known (in-process callers).
    Unknown,
}

impl Client {
    pub fn of(ip: Option<IpAddr>) -> Client {
        match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => Client::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Client::V6(prefix)
            }
            None => Client::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// Failure counts by key, bounded.
#[derive(Debug)]
struct Tracker<K> {
    records: HashMap<K, Record>,
    free: u32,
}

impl<K: Eq + Hash + Clone> Tracker<K> {
    fn new(free: u32) -> Self {
        Tracker {
            records: HashMap::new(),
            free,
        }
    }

    /// How long `key` must still wait, if it is blocked.
    fn blocked(&self, key: &K, now: Instant) -> Option<Duration> {
        let until = self.records.get(key)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    fn fail(&mut self, key: &K, now: Instant, limits: &Limits) {
        if !self.records.contains_key(key) {
            self.make_room(now, limits);
        }
        let record = self.records.entry(key.clone()).or_insert(Record {
            failures: 0,
            last: now,
            blocked_until: None,
        });
        if now.saturating_duration_since(record.last) > limits.window {
            record.failures = 0;
            record.blocked_until = None;
        }
        record.failures = record.failures.saturating_add(1);
        record.last = now;
        if record.failures >= self.free {
            let doublings = (record.failures - self.free).min(20);
            let delay = limits
                .first_delay
                .saturating_mul(1u32 << doublings)
                .min(limits.max_delay);
            record.blocked_until = Some(now + delay);
        }
    }

    fn forget(&mut self, key: &K) {
        self.records.remove(key);
    }

    fn make_room(&mut self, now: Instant, limits: &Limits) {
        if self.records.len() < limits.max_tracked {
            return;
        }
        self.records
            .retain(|_, r| now.saturating_duration_since(r.last) <= limits.window);
        while self.records.len() >= limits.max_tracked.max(1) {
            let Some(oldest) = self
                .records
                .iter()
                .min_by_key(|(_, r)| r.last)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.records.remove(&oldest);
        }
    }
}

#[derive(Debug)]
struct State {
    pairs: Tracker<(Client, UserKey)>,
    clients: Tracker<Client>,
    users: Tracker<UserKey>,
    /// (client, username) → time of the last successful login.
    trusted: HashMap<(Client, UserKey), Instant>,
}

/// A username as the maps hold it: its SHA-256, so an entry's size does not depend on what
/// a client sent (a Basic header can carry a username of many kilobytes).
type UserKey = [u8; 32];

fn user_key(username: &str) -> UserKey {
    use sha2::Digest as _;
    sha2::Sha256::digest(username.as_bytes()).into()
}

/// Counts failed logins and says when to refuse (see the module docs).
#[derive(Debug)]
pub struct LoginThrottle {
    limits: Limits,
    state: Mutex<State>,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle::new(Limits::default())
    }
}

impl LoginThrottle {
    pub fn new(limits: Limits) -> Self {
        LoginThrottle {
            state: Mutex::new(State {
                pairs: Tracker::new(limits.free_failures),
                clients: Tracker::new(limits.client_free_failures),
                users: Tracker::new(limits.user_free_failures),
                trusted: HashMap::new(),
            }),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(wait)` when an attempt by `client` as `username` must be refused now.
    pub fn check(&self, client: Client, username: &str, now: Instant) -> Result<(), Duration> {
        let state = self.lock();
        let pair = (client, user_key(username));
        let trusted = state
            .trusted
            .get(&pair)
            .is_some_and(|at| now.saturating_duration_since(*at) <= self.limits.trust);
        let waits = [
            state.pairs.blocked(&pair, now),
            state.clients.blocked(&client, now),
            if trusted {
                None
            } else {
                state.users.blocked(&pair.1, now)
            },
        ];
        match waits.into_iter().flatten().max() {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Records a failed attempt; `user_exists` says whether to count it for the username.
    pub fn failed(&self, client: Client, username: &str, user_exists: bool, now: Instant) {
        let limits = self.limits;
        let mut state = self.lock();
        let user = user_key(username);
        state.pairs.fail(&(client, user), now, &limits);
        state.clients.fail(&client, now, &limits);
        if user_exists {
            state.users.fail(&user, now, &limits);
        }
    }

    /// Records a successful login: resets the pair and trusts the client for this user.
    pub fn succeeded(&self, client: Client, username: &str, now: Instant) {
        let limits = self.limits;
        let mut state = self.lock();
        let pair = (client, user_key(username));
        state.pairs.forget(&pair);
        if !state.trusted.contains_key(&pair) && state.trusted.len() >= limits.max_tracked {
            state
                .trusted
                .retain(|_, at| now.saturating_duration_since(*at) <= limits.trust);
            while state.trusted.len() >= limits.max_tracked.max(1) {
                let Some(oldest) = state
                    .trusted
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| *k)
                else {
                    break;
                };
                state.trusted.remove(&oldest);
            }
        }
        state.trusted.insert(pair, now);
    }

    /// Entries held, for tests of the memory bound.
    pub fn tracked(&self) -> usize {
        let state = self.lock();
        state.pairs.records.len()
            + state.clients.records.len()
            + state.users.records.len()
            + state.trusted.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Client {
        Client::of(Some(text.parse().expect("ip")))
    }

    #[test]
    fn the_sixth_failure_of_a_pair_is_refused_with_a_doubling_delay() {
        let throttle = LoginThrottle::default();
        let start = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..4 {
            assert_eq!(throttle.check(a, "admin", start), Ok(()));
            throttle.failed(a, "admin", true, start);
        }
        assert_eq!(throttle.check(a, "admin", start), Ok(()));
        throttle.failed(a, "admin", true, start);
        assert_eq!(
            throttle.check(a, "admin", start),
            Err(Duration::from_secs(1))
        );
        // Another address, or another user from this address, is not slowed.
        assert_eq!(throttle.check(ip("192.0.2.2"), "admin", start), Ok(()));
        assert_eq!(throttle.check(a, "other", start), Ok(()));
        // Once the delay is over, one more failure doubles it.
        let later = start + Duration::from_secs(1);
        assert_eq!(throttle.check(a, "admin", later), Ok(()));
        throttle.failed(a, "admin", true, later);
        assert_eq!(
            throttle.check(a, "admin", later),
            Err(Duration::from_secs(2))
        );
        // A success resets the pair.
        throttle.succeeded(a, "admin", later + Duration::from_secs(2));
        assert_eq!(
            throttle.check(a, "admin", later + Duration::from_secs(2)),
            Ok(())
        );
    }

    #[test]
    fn delays_are_capped_and_failures_expire() {
        let limits = Limits::default();
        let throttle = LoginThrottle::new(limits);
        let a = ip("192.0.2.1");
        let mut now = Instant::now();
        for _ in 0..40 {
            throttle.failed(a, "admin", true, now);
            now += limits.max_delay;
        }
        let wait = throttle.check(a, "admin", now - limits.max_delay);
        assert_eq!(wait, Err(limits.max_delay));
        let much_later = now + limits.window + Duration::from_secs(1);
        throttle.failed(a, "admin", true, much_later);
        assert_eq!(throttle.check(a, "admin", much_later), Ok(()));
    }

    #[test]
    fn spraying_usernames_from_one_client_is_slowed() {
        let throttle = LoginThrottle::default();
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..20 {
            assert_eq!(throttle.check(a, &format!("user{i}"), now), Ok(()));
            throttle.failed(a, &format!("user{i}"), false, now);
        }
        assert!(throttle.check(a, "admin", now).is_err());
        // A success with a valid account does not lift it.
        throttle.succeeded(a, "mine", now);
        assert!(throttle.check(a, "admin", now).is_err());
        assert_eq!(throttle.check(ip("192.0.2.9"), "admin", now), Ok(()));
    }

    #[test]
    fn many_clients_slow_a_username_but_not_its_trusted_clients() {
        let throttle = LoginThrottle::default();
        let now = Instant::now();
        let home = ip("198.51.100.7");
        throttle.succeeded(home, "admin", now);
        for i in 0..100u32 {
            let attacker = Client::V4([203, 0, (i / 256) as u8, (i % 256) as u8]);
            throttle.failed(attacker, "admin", true, now);
        }
        assert!(throttle.check(ip("192.0.2.50"), "admin", now).is_err());
        assert_eq!(throttle.check(home, "admin", now), Ok(()));
        // Unknown users are not counted per username.
        for i in 0..200u32 {
            let attacker = Client::V4([203, 1, (i / 256) as u8, (i % 256) as u8]);
            throttle.failed(attacker, "ghost", false, now);
        }
        assert_eq!(throttle.check(ip("192.0.2.50"), "ghost", now), Ok(()));
    }

    #[test]
    fn ipv6_clients_are_their_64_prefix() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
    }

    #[test]
    fn memory_is_bounded() {
        let limits = Limits {
            max_tracked: 100,
            ..Limits::default()
        };
        let throttle = LoginThrottle::new(limits);
        let now = Instant::now();
        for i in 0..10_000u32 {
            let client = Client::V4(i.to_be_bytes());
            throttle.failed(client, &format!("u{i}"), true, now);
            throttle.succeeded(client, &format!("u{i}"), now);
        }
        assert!(throttle.tracked() <= 4 * 100, "{}", throttle.tracked());
    }
}
