//! Which server the next connection attempt dials, and how long it waits first.
//!
//! Pure state over the configured endpoints and a [`Backoff`]: the session asks it before every
//! attempt and tells it when a login succeeded. It knows nothing about sockets.
//!
//! The rules:
//!
//! - Every attempt dials the endpoint after the previous attempt's one, cycling through the
//!   list (in a per-session random permutation, or as listed; see [`ServerOrder`]). So a
//!   connection that fails or ends — whatever the reason, a node restarting (1012) or going
//!   away (1001) included — is followed by an attempt on another node.
//! - A *round* is one attempt on each endpoint. The backoff delay is taken once per round,
//!   before its first attempt; the other attempts of the round follow at once, so a dead node
//!   costs one failed connect, never a backoff delay, before a live one is tried.
//! - A successful login counts as the first attempt of a new round: if that connection ends,
//!   every other endpoint is tried at once before the next delay. With one endpoint every
//!   attempt is a round, which is exactly the single-server behaviour of [`Backoff`].

use std::time::Duration;

use rand::seq::SliceRandom;

use crate::backoff::Backoff;
use crate::config::{ReconnectPolicy, ServerOrder};

/// One planned connection attempt.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Attempt {
    /// The endpoint to dial.
    pub(crate) url: String,
    /// How long to wait before dialing.
    pub(crate) delay: Duration,
    /// Whether this is the last attempt of its round: every endpoint will have been tried
    /// once. The first login gives up only after such an attempt.
    pub(crate) ends_round: bool,
}

/// The endpoints in the order this session tries them, and where it is in that cycle.
#[derive(Debug)]
pub(crate) struct Rotation {
    urls: Vec<String>,
    next: usize,
    /// Attempts left in the current round; 0 means the next attempt starts a round.
    left_in_round: usize,
    backoff: Backoff,
}

impl Rotation {
    /// A rotation over `urls` (not empty: the configuration guarantees it).
    pub(crate) fn new(urls: &[String], order: ServerOrder, policy: ReconnectPolicy) -> Self {
        assert!(!urls.is_empty(), "a configuration has at least one url");
        let mut urls = urls.to_vec();
        match order {
            ServerOrder::Shuffled => urls.shuffle(&mut rand::rng()),
            ServerOrder::AsListed => {}
        }
        Self {
            urls,
            next: 0,
            left_in_round: 0,
            backoff: Backoff::new(policy),
        }
    }

    /// Plans the next attempt and advances to the endpoint after it.
    pub(crate) fn next_attempt(&mut self) -> Attempt {
        let delay = if self.left_in_round == 0 {
            self.left_in_round = self.urls.len();
            self.backoff.next_delay()
        } else {
            Duration::ZERO
        };
        self.left_in_round -= 1;
        let url = self.urls[self.next].clone();
        self.next = (self.next + 1) % self.urls.len();
        Attempt {
            url,
            delay,
            ends_round: self.left_in_round == 0,
        }
    }

    /// The last attempt logged in: it opens a new round, so that when its connection ends
    /// the other endpoints are tried before any delay.
    pub(crate) fn logged_in(&mut self) {
        self.left_in_round = self.urls.len() - 1;
    }

    /// Starts the delay sequence over (after a connection that stayed up long enough, or when
    /// the app asks to reconnect now).
    pub(crate) fn reset_backoff(&mut self) {
        self.backoff.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("ws://node-{i}/v1/ws")).collect()
    }

    fn no_jitter() -> ReconnectPolicy {
        ReconnectPolicy {
            jitter: 0.0,
            ..ReconnectPolicy::default()
        }
    }

    fn plan(rotation: &mut Rotation, n: usize) -> Vec<(String, u64, bool)> {
        (0..n)
            .map(|_| {
                let a = rotation.next_attempt();
                (a.url, a.delay.as_millis() as u64, a.ends_round)
            })
            .collect()
    }

    fn step(i: usize, delay_ms: u64, ends_round: bool) -> (String, u64, bool) {
        (format!("ws://node-{i}/v1/ws"), delay_ms, ends_round)
    }

    #[test]
    fn failed_attempts_cycle_through_the_list_with_one_delay_per_round() {
        let mut rotation = Rotation::new(&urls(3), ServerOrder::AsListed, no_jitter());
        assert_eq!(
            plan(&mut rotation, 9),
            vec![
                step(0, 0, false),
                step(1, 0, false),
                step(2, 0, true),
                step(0, 250, false),
                step(1, 0, false),
                step(2, 0, true),
                step(0, 500, false),
                step(1, 0, false),
                step(2, 0, true),
            ]
        );
    }

    #[test]
    fn a_dropped_connection_moves_on_to_the_next_node_at_once() {
        let mut rotation = Rotation::new(&urls(3), ServerOrder::AsListed, no_jitter());
        // node-0 fails, node-1 logs in (backoff not reset: a short-lived connection).
        assert_eq!(
            plan(&mut rotation, 2),
            vec![step(0, 0, false), step(1, 0, false)]
        );
        rotation.logged_in();
        // Its connection drops: node-2 and node-0 are tried at once, then the round's delay.
        assert_eq!(
            plan(&mut rotation, 3),
            vec![step(2, 0, false), step(0, 0, true), step(1, 250, false)]
        );
        // After a connection that stayed up, the backoff starts over.
        rotation.logged_in();
        rotation.reset_backoff();
        assert_eq!(
            plan(&mut rotation, 4),
            vec![
                step(2, 0, false),
                step(0, 0, true),
                step(1, 0, false),
                step(2, 0, false)
            ]
        );
    }

    #[test]
    fn one_url_keeps_the_single_server_backoff() {
        let mut rotation = Rotation::new(&urls(1), ServerOrder::Shuffled, no_jitter());
        assert_eq!(
            plan(&mut rotation, 3),
            vec![step(0, 0, true), step(0, 250, true), step(0, 500, true)]
        );
        rotation.logged_in();
        assert_eq!(plan(&mut rotation, 1), vec![step(0, 1000, true)]);
        rotation.reset_backoff();
        assert_eq!(plan(&mut rotation, 1), vec![step(0, 0, true)]);
    }

    #[test]
    fn shuffled_orders_are_permutations_that_start_anywhere() {
        let all = urls(3);
        let mut first = std::collections::HashSet::new();
        for _ in 0..300 {
            let mut rotation = Rotation::new(&all, ServerOrder::Shuffled, no_jitter());
            let round: Vec<String> = plan(&mut rotation, 3).into_iter().map(|s| s.0).collect();
            let mut sorted = round.clone();
            sorted.sort();
            assert_eq!(sorted, all, "each url once per round");
            let again: Vec<String> = plan(&mut rotation, 3).into_iter().map(|s| s.0).collect();
            assert_eq!(again, round, "the same order every round");
            first.insert(round[0].clone());
        }
        assert_eq!(first.len(), 3, "every url gets to be first: {first:?}");
    }
}
