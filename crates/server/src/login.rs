//! Failed-login throttling for the user API's Basic authentication and the dashboard's
//! login, shared by every replica.
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
//! * **One throttle for the installation.** The counters live in the database (table
//!   `login_throttle`, `store::throttle`), so guesses spread over replicas behind a load
//!   balancer meet the same counters, at the same count, as guesses sent to one server. An
//!   in-memory throttle per replica would be cheaper by one read, but would give an
//!   attacker N times the allowance with N replicas, and a blocked address a fresh
//!   allowance on every other replica. The cost, per sign-in:
//!   - [`LoginThrottle::check`]: one read of at most four rows by primary key (the pair,
//!     client and user counters and the pair's trust), on the read pool — the same order as
//!     the key lookup that follows it.
//!   - a success writes only when it must: to forget the pair's failures when the check
//!     found some, and to record trust when the pair has none or it is older than
//!     [`Limits::trust_refresh`] (an hour). A client signing in with a valid key all day
//!     costs one write an hour, not one per request (SQLite has a single writer, and a valid
//!     key is the API's hot path). So trust counts from a success at most an hour before the
//!     last one: a day of trust is at least 23 hours.
//!   - a failure writes its counters in one transaction, incrementing in SQL so that
//!     replicas failing at once never lose a count.
//!
//!   Measured (debug build, a shared 2-core machine, 4 × 1,500 GETs with a valid key on one
//!   connection, against the same server without the read): p50 1.2–1.3 ms → 1.2–1.5 ms
//!   on SQLite, 2.0–2.1 ms → 2.2–2.6 ms on a local PostgreSQL.
//!
//!   Times are Unix milliseconds (Instants mean nothing to another process); replicas'
//!   clocks decide only when a block or a failure runs out. A check or a count that the
//!   database cannot answer refuses the sign-in (500) rather than letting it through
//!   unthrottled; a success whose trust cannot be written is still a success (logged).
//! * **Clients** are the connection's peer address; an IPv6 client is its /64 prefix, which
//!   is what one subscriber usually gets, so rotating addresses inside it does not help.
//!   `X-Forwarded-For` is not trusted (anyone can send it). Behind a reverse proxy or a load
//!   balancer that does not pass the client's address through (an NLB in TCP mode does)
//!   every client is the proxy, so counters 1 and 2 then apply to everyone together; run
//!   the proxy with its own rate limiting, or let connections through with their address.
//! * **Bounded table.** Each kind (pair, client, user, trust) holds at most
//!   [`Limits::max_tracked`] rows. Before a new subject is added to a full kind, its rows
//!   idle for longer than they count (the window; a day for trust) are deleted first, then
//!   the longest idle; usernames are tracked only if the user exists, so random names cannot
//!   flush the per-user counter, and are held as their SHA-256, so a long name costs no more
//!   than a short one (the store never sees a username). The count that decides whether
//!   room is needed runs only when a new subject is added.
//! * **Every way of signing in shares it** (issue #15): Basic with any of a user's API keys
//!   or its argon2 password, and the dashboard's login, all go through [`LoginThrottle::check`]
//!   before the secret is looked at, with the same three counters — so a password, the one
//!   guessable secret, gets per-address, per-(address, user) and per-user limits, and a
//!   failure costs the guesser one argon2 verification besides (`app::access`). A removed
//!   user counts as unknown (not per user), like a name that never existed.
//! * Time comes from the caller (`now_ms`), so the logic is tested without sleeping, on
//!   SQLite and PostgreSQL.

use std::net::IpAddr;
use std::time::Duration;

use crate::store::throttle::{Failure, Retention, ThrottleRow};
use crate::store::{Store, StoreError};

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
    /// A success records trust again only once the recorded one is this old.
    pub trust_refresh: Duration,
    /// Rows per kind of counter (and of trust).
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
            trust_refresh: Duration::from_secs(60 * 60),
            max_tracked: 10_000,
        }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The wall clock in Unix milliseconds: the time every replica counts in.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
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

    /// How the table names it.
    fn subject(&self) -> String {
        match self {
            Client::V4(octets) => format!("4:{}", hex::encode(octets)),
            Client::V6(prefix) => format!("6:{}", hex::encode(prefix)),
            Client::Unknown => "unknown".to_owned(),
        }
    }
}

const PAIR: &str = "pair";
const CLIENT: &str = "client";
const USER: &str = "user";
const TRUST: &str = "trust";

/// A sign-in attempt as [`LoginThrottle::check`] found it: its subjects and their rows, so
/// that [`LoginThrottle::failed`] and [`LoginThrottle::succeeded`] write only what they
/// must.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// `<client>/<hex SHA-256 of the username>`: the pair counter's and trust's subject.
    pair: String,
    client: String,
    /// Hex SHA-256 of the username: a username as the table holds it, so a row's size does
    /// not depend on what a client sent (a Basic header can carry a name of many kilobytes).
    user: String,
    rows: Vec<ThrottleRow>,
}

impl Attempt {
    fn new(client: Client, username: &str) -> Attempt {
        use sha2::Digest as _;
        let user = hex::encode(sha2::Sha256::digest(username.as_bytes()));
        let client = client.subject();
        Attempt {
            pair: format!("{client}/{user}"),
            client,
            user,
            rows: Vec::new(),
        }
    }

    fn row(&self, kind: &str) -> Option<&ThrottleRow> {
        let subject = match kind {
            CLIENT => &self.client,
            USER => &self.user,
            _ => &self.pair,
        };
        self.rows
            .iter()
            .find(|r| r.kind == kind && r.subject == *subject)
    }
}

/// How long `row` is still blocked at `now_ms`, if it is.
fn blocked(row: Option<&ThrottleRow>, now_ms: i64) -> Option<Duration> {
    let until = row?.blocked_until_ms?;
    (until > now_ms).then(|| Duration::from_millis(u64::try_from(until - now_ms).unwrap_or(0)))
}

/// The end of the block that the `failures`-th failure in a row earns, with `free` failures
/// allowed: none below `free`, then a delay doubling from the first up to the longest.
fn block_until(failures: i64, free: u32, now_ms: i64, limits: &Limits) -> Option<i64> {
    let over = failures.checked_sub(i64::from(free)).filter(|o| *o >= 0)?;
    let doublings = u32::try_from(over.min(20)).unwrap_or(20);
    let delay = limits
        .first_delay
        .saturating_mul(1u32 << doublings)
        .min(limits.max_delay);
    Some(now_ms.saturating_add(millis(delay)))
}

/// Counts failed logins in the database and says when to refuse (see the module docs).
#[derive(Debug, Clone)]
pub struct LoginThrottle {
    limits: Limits,
    store: Store,
}

impl LoginThrottle {
    pub fn new(limits: Limits, store: Store) -> Self {
        LoginThrottle { limits, store }
    }

    fn retention(&self) -> Retention {
        Retention {
            window_ms: millis(self.limits.window),
            trust_ms: millis(self.limits.trust),
            max: i64::try_from(self.limits.max_tracked).unwrap_or(i64::MAX),
        }
    }

    /// `Ok(Err(wait))` when an attempt by `client` as `username` must be refused now;
    /// otherwise the attempt, to be reported as [`failed`](Self::failed) or
    /// [`succeeded`](Self::succeeded). One read.
    pub async fn check(
        &self,
        client: Client,
        username: &str,
        now_ms: i64,
    ) -> Result<Result<Attempt, Duration>, StoreError> {
        let mut attempt = Attempt::new(client, username);
        attempt.rows = self
            .store
            .throttle_rows([
                (PAIR, attempt.pair.as_str()),
                (CLIENT, attempt.client.as_str()),
                (USER, attempt.user.as_str()),
                (TRUST, attempt.pair.as_str()),
            ])
            .await?;
        let trusted = attempt
            .row(TRUST)
            .is_some_and(|t| now_ms.saturating_sub(t.last_ms) <= millis(self.limits.trust));
        let waits = [
            blocked(attempt.row(PAIR), now_ms),
            blocked(attempt.row(CLIENT), now_ms),
            if trusted {
                None
            } else {
                blocked(attempt.row(USER), now_ms)
            },
        ];
        Ok(match waits.into_iter().flatten().max() {
            Some(wait) => Err(wait),
            None => Ok(attempt),
        })
    }

    /// Records a failed attempt; `user_exists` says whether to count it for the username.
    pub async fn failed(
        &self,
        attempt: &Attempt,
        user_exists: bool,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut failures = vec![
            Failure {
                kind: PAIR,
                subject: &attempt.pair,
                new: attempt.row(PAIR).is_none(),
            },
            Failure {
                kind: CLIENT,
                subject: &attempt.client,
                new: attempt.row(CLIENT).is_none(),
            },
        ];
        if user_exists {
            failures.push(Failure {
                kind: USER,
                subject: &attempt.user,
                new: attempt.row(USER).is_none(),
            });
        }
        let limits = self.limits;
        self.store
            .count_login_failures(&failures, now_ms, self.retention(), |kind, count| {
                let free = match kind {
                    PAIR => limits.free_failures,
                    CLIENT => limits.client_free_failures,
                    _ => limits.user_free_failures,
                };
                block_until(count, free, now_ms, &limits)
            })
            .await
    }

    /// Records a successful login: resets the pair (if it had failures) and trusts the
    /// client for this user (unless it was trusted less than [`Limits::trust_refresh`] ago).
    /// Nothing is written for a client that did both recently.
    pub async fn succeeded(&self, attempt: &Attempt, now_ms: i64) -> Result<(), StoreError> {
        let forget = attempt.row(PAIR).map(|_| attempt.pair.as_str());
        let trust = match attempt.row(TRUST) {
            Some(row) if now_ms.saturating_sub(row.last_ms) < millis(self.limits.trust_refresh) => {
                None
            }
            row => Some((attempt.pair.as_str(), row.is_none())),
        };
        self.store
            .record_login_success(forget, trust, now_ms, self.retention())
            .await
    }

    /// Rows held, for tests of the bound.
    pub async fn tracked(&self) -> Result<i64, StoreError> {
        self.store.throttle_rows_held().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{self, Backend, store_tests};

    fn ip(text: &str) -> Client {
        Client::of(Some(text.parse().expect("ip")))
    }

    /// The throttle's answer, as the in-memory one gave it.
    async fn check(
        throttle: &LoginThrottle,
        client: Client,
        user: &str,
        now: i64,
    ) -> Result<(), Duration> {
        throttle
            .check(client, user, now)
            .await
            .expect("read")
            .map(|_| ())
    }

    async fn fail(throttle: &LoginThrottle, client: Client, user: &str, exists: bool, now: i64) {
        let attempt = Attempt::new(client, user);
        let attempt = match throttle.check(client, user, now).await.expect("read") {
            Ok(found) => found,
            // A blocked attempt is never counted by the server; the tests count it anyway
            // to move time along, from what a fresh check would find.
            Err(_) => {
                let rows = throttle
                    .store
                    .throttle_rows([
                        (PAIR, attempt.pair.as_str()),
                        (CLIENT, attempt.client.as_str()),
                        (USER, attempt.user.as_str()),
                        (TRUST, attempt.pair.as_str()),
                    ])
                    .await
                    .expect("read");
                Attempt { rows, ..attempt }
            }
        };
        throttle.failed(&attempt, exists, now).await.expect("count");
    }

    async fn succeed(throttle: &LoginThrottle, client: Client, user: &str, now: i64) {
        let attempt = throttle
            .check(client, user, now)
            .await
            .expect("read")
            .expect("not blocked");
        throttle.succeeded(&attempt, now).await.expect("record");
    }

    async fn throttle(backend: Backend, limits: Limits) -> (testing::TestStore, LoginThrottle) {
        let store = testing::store(backend).await;
        let throttle = LoginThrottle::new(limits, (*store).clone());
        (store, throttle)
    }

    const START: i64 = 1_700_000_000_000;

    async fn the_sixth_failure_of_a_pair_is_refused_with_a_doubling_delay(backend: Backend) {
        let (store, throttle) = throttle(backend, Limits::default()).await;
        // Another replica: its own pools on the same database, the same counters.
        let other = LoginThrottle::new(Limits::default(), store.another_replica().await);
        let start = START;
        let a = ip("192.0.2.1");
        for i in 0..4 {
            let replica = if i % 2 == 0 { &throttle } else { &other };
            assert_eq!(check(replica, a, "admin", start).await, Ok(()));
            fail(replica, a, "admin", true, start).await;
        }
        assert_eq!(check(&other, a, "admin", start).await, Ok(()));
        fail(&other, a, "admin", true, start).await;
        for replica in [&throttle, &other] {
            assert_eq!(
                check(replica, a, "admin", start).await,
                Err(Duration::from_secs(1))
            );
        }
        // Another address, or another user from this address, is not slowed.
        assert_eq!(
            check(&throttle, ip("192.0.2.2"), "admin", start).await,
            Ok(())
        );
        assert_eq!(check(&throttle, a, "other", start).await, Ok(()));
        // Once the delay is over, one more failure doubles it.
        let later = start + 1000;
        assert_eq!(check(&throttle, a, "admin", later).await, Ok(()));
        fail(&throttle, a, "admin", true, later).await;
        assert_eq!(
            check(&other, a, "admin", later).await,
            Err(Duration::from_secs(2))
        );
        // A success (on the other replica) resets the pair.
        succeed(&other, a, "admin", later + 2000).await;
        assert_eq!(check(&throttle, a, "admin", later + 2000).await, Ok(()));
    }

    async fn delays_are_capped_and_failures_expire(backend: Backend) {
        let limits = Limits::default();
        let (_store, throttle) = throttle(backend, limits).await;
        let a = ip("192.0.2.1");
        let mut now = START;
        for _ in 0..40 {
            fail(&throttle, a, "admin", true, now).await;
            now += millis(limits.max_delay);
        }
        let wait = check(&throttle, a, "admin", now - millis(limits.max_delay)).await;
        assert_eq!(wait, Err(limits.max_delay));
        let much_later = now + millis(limits.window) + 1000;
        fail(&throttle, a, "admin", true, much_later).await;
        assert_eq!(check(&throttle, a, "admin", much_later).await, Ok(()));
    }

    async fn spraying_usernames_from_one_client_is_slowed(backend: Backend) {
        let (_store, throttle) = throttle(backend, Limits::default()).await;
        let now = START;
        let a = ip("192.0.2.1");
        for i in 0..20 {
            assert_eq!(check(&throttle, a, &format!("user{i}"), now).await, Ok(()));
            fail(&throttle, a, &format!("user{i}"), false, now).await;
        }
        assert!(check(&throttle, a, "admin", now).await.is_err());
        // A success with a valid account does not lift it (recorded as the server would,
        // had the check let it through).
        let attempt = Attempt::new(a, "mine");
        throttle.succeeded(&attempt, now).await.expect("record");
        assert!(check(&throttle, a, "admin", now).await.is_err());
        assert_eq!(
            check(&throttle, ip("192.0.2.9"), "admin", now).await,
            Ok(())
        );
    }

    async fn many_clients_slow_a_username_but_not_its_trusted_clients(backend: Backend) {
        let (_store, throttle) = throttle(backend, Limits::default()).await;
        let now = START;
        let home = ip("198.51.100.7");
        succeed(&throttle, home, "admin", now).await;
        for i in 0..100u32 {
            let attacker = Client::V4([203, 0, (i / 256) as u8, (i % 256) as u8]);
            fail(&throttle, attacker, "admin", true, now).await;
        }
        assert!(
            check(&throttle, ip("192.0.2.50"), "admin", now)
                .await
                .is_err()
        );
        assert_eq!(check(&throttle, home, "admin", now).await, Ok(()));
        // Unknown users are not counted per username.
        for i in 0..120u32 {
            let attacker = Client::V4([203, 1, (i / 256) as u8, (i % 256) as u8]);
            fail(&throttle, attacker, "ghost", false, now).await;
        }
        assert_eq!(
            check(&throttle, ip("192.0.2.50"), "ghost", now).await,
            Ok(())
        );
    }

    async fn a_success_writes_only_when_it_must(backend: Backend) {
        let (store, throttle) = throttle(backend, Limits::default()).await;
        let a = ip("192.0.2.1");
        succeed(&throttle, a, "admin", START).await;
        assert_eq!(store.throttle_rows_held().await.expect("count"), 1, "trust");
        let pair = Attempt::new(a, "admin").pair;
        let trusted = store
            .throttle_rows([(TRUST, pair.as_str()); 4])
            .await
            .expect("read");
        // Within the refresh interval a success writes nothing.
        succeed(&throttle, a, "admin", START + 1000).await;
        let again = store
            .throttle_rows([(TRUST, pair.as_str()); 4])
            .await
            .expect("read");
        assert_eq!(trusted, again);
        // Past it, trust is recorded again.
        let refresh = millis(Limits::default().trust_refresh);
        succeed(&throttle, a, "admin", START + refresh).await;
        let refreshed = store
            .throttle_rows([(TRUST, pair.as_str()); 4])
            .await
            .expect("read");
        assert_eq!(refreshed[0].last_ms, START + refresh);
    }

    #[test]
    fn ipv6_clients_are_their_64_prefix() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
        assert_eq!(ip("192.0.2.1").subject(), "4:c0000201");
        assert_eq!(ip("2001:db8:1:2::1").subject(), "6:20010db800010002");
    }

    #[test]
    fn blocks_double_from_the_free_allowance_up_to_the_longest() {
        let limits = Limits::default();
        assert_eq!(block_until(4, 5, 0, &limits), None);
        assert_eq!(block_until(5, 5, 0, &limits), Some(1000));
        assert_eq!(block_until(7, 5, 0, &limits), Some(4000));
        assert_eq!(block_until(500, 5, 0, &limits), Some(300_000));
    }

    async fn the_table_is_bounded(backend: Backend) {
        let limits = Limits {
            max_tracked: 10,
            ..Limits::default()
        };
        let (_store, throttle) = throttle(backend, limits).await;
        for i in 0..60u32 {
            let client = Client::V4(i.to_be_bytes());
            fail(
                &throttle,
                client,
                &format!("u{i}"),
                true,
                START + i64::from(i),
            )
            .await;
            succeed(&throttle, client, &format!("u{i}"), START + i64::from(i)).await;
        }
        let held = throttle.tracked().await.expect("count");
        assert!(held <= 4 * 10, "{held}");
        // The newest are the ones kept.
        let last = Client::V4(59u32.to_be_bytes());
        fail(&throttle, last, "u59", true, START + 100).await;
        let attempt = throttle
            .check(last, "u59", START + 100)
            .await
            .expect("read")
            .expect("free");
        assert_eq!(
            attempt.row(CLIENT).map(|r| r.failures),
            Some(2),
            "the newest client is kept"
        );
        assert_eq!(
            attempt.row(PAIR).map(|r| r.failures),
            Some(1),
            "its pair was reset"
        );
    }

    store_tests!(
        the_sixth_failure_of_a_pair_is_refused_with_a_doubling_delay,
        delays_are_capped_and_failures_expire,
        spraying_usernames_from_one_client_is_slowed,
        many_clients_slow_a_username_but_not_its_trusted_clients,
        a_success_writes_only_when_it_must,
        the_table_is_bounded,
    );
}
