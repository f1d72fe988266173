//! Who is active: a sans-IO state machine fed with what the peer said and
//! the time, answering what to do. The node driver ([`super::Node`]) does
//! the talking.
//!
//! - A node starts `Waiting`. It follows a peer that says it is active.
//! - Two waiting nodes: the one whose store holds the later entry (then
//!   the lower name) takes over at once; the other waits to hear it.
//! - A waiting node or a standby that hears no active for `takeover_after`
//!   takes over, one term above the highest it knows.
//! - Two actives that meet (after a cut between them): the higher term
//!   stays, the other steps down; on equal terms the lower name stays.

use std::time::{Duration, Instant};

/// A node's part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Waiting,
    Standby,
    Active,
}

/// What a peer says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub node: String,
    pub role: Role,
    pub term: u64,
    /// The last entry its store holds: (term, sequence number).
    pub tip: (u64, u64),
}

/// What the node should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changes.
    Stay,
    /// Replicate from the peer, which is active.
    Follow,
    /// Become active, in the term [`Election::take_over`] returns.
    TakeOver,
    /// Another active wins: stop serving at once.
    StepDown,
}

#[derive(Debug, Clone)]
pub struct Election {
    node: String,
    role: Role,
    /// The highest term this node knows of.
    term: u64,
    /// The last entry this node's store holds: (term, sequence number).
    tip: (u64, u64),
    /// When an active was last heard (or the node started).
    heard: Instant,
    takeover_after: Duration,
}

impl Election {
    /// A node starting with a store whose last term was `term`.
    pub fn new(node: &str, term: u64, now: Instant, takeover_after: Duration) -> Election {
        Election {
            node: node.to_string(),
            role: Role::Waiting,
            term,
            tip: (0, 0),
            heard: now,
            takeover_after,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// The store now holds up to this entry.
    pub fn set_tip(&mut self, term: u64, seq: u64) {
        self.tip = (term, seq);
    }

    /// What this node says of itself to its peer.
    pub fn state(&self) -> PeerState {
        PeerState {
            node: self.node.clone(),
            role: self.role,
            term: self.term,
            tip: self.tip,
        }
    }

    /// The peer said what it is.
    pub fn on_peer(&mut self, now: Instant, peer: &PeerState) -> Verdict {
        match (self.role, peer.role) {
            (Role::Waiting | Role::Standby, Role::Active) => {
                self.term = self.term.max(peer.term);
                self.heard = now;
                self.role = Role::Standby;
                Verdict::Follow
            }
            // Two nodes starting: the one whose store is further along,
            // then the lower name, so no node with less replaces more.
            (Role::Waiting, Role::Waiting) => {
                self.term = self.term.max(peer.term);
                // The loser gives the winner a full wait to take over.
                self.heard = now;
                if (self.tip, std::cmp::Reverse(&self.node))
                    > (peer.tip, std::cmp::Reverse(&peer.node))
                {
                    Verdict::TakeOver
                } else {
                    Verdict::Stay
                }
            }
            // The loser keeps its own term: it must not then look like
            // the winner to the peer while it stops.
            (Role::Active, Role::Active) if wins(peer, &self.state()) => Verdict::StepDown,
            _ => Verdict::Stay,
        }
    }

    /// The active spoke (an entry or a heartbeat) in `term`.
    pub fn on_heard(&mut self, now: Instant, term: u64) {
        self.term = self.term.max(term);
        self.heard = now;
    }

    /// The time passed; a node not active takes over after
    /// `takeover_after` without an active.
    pub fn on_tick(&mut self, now: Instant) -> Verdict {
        if self.role != Role::Active && now.duration_since(self.heard) >= self.takeover_after {
            Verdict::TakeOver
        } else {
            Verdict::Stay
        }
    }

    /// Becomes active; returns the new term.
    pub fn take_over(&mut self) -> u64 {
        self.role = Role::Active;
        self.term += 1;
        self.term
    }
}

/// Whether active `a` wins over active `b`: the higher term, then the
/// lower name.
fn wins(a: &PeerState, b: &PeerState) -> bool {
    (a.term, std::cmp::Reverse(&a.node)) > (b.term, std::cmp::Reverse(&b.node))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(3);

    fn peer(node: &str, role: Role, term: u64) -> PeerState {
        PeerState {
            node: node.into(),
            role,
            term,
            tip: (term, 10),
        }
    }

    #[test]
    fn a_lone_node_takes_over_after_the_wait_in_the_next_term() {
        let t0 = Instant::now();
        let mut e = Election::new("c1", 4, t0, WAIT);
        assert_eq!(e.on_tick(t0 + Duration::from_millis(2999)), Verdict::Stay);
        assert_eq!(e.on_tick(t0 + WAIT), Verdict::TakeOver);
        assert_eq!(e.take_over(), 5);
        assert_eq!(e.role(), Role::Active);
        // An active never times out.
        assert_eq!(e.on_tick(t0 + WAIT * 100), Verdict::Stay);
    }

    #[test]
    fn a_standby_follows_while_it_hears_and_takes_over_above_the_actives_term() {
        let t0 = Instant::now();
        let mut e = Election::new("c1", 2, t0, WAIT);
        assert_eq!(e.on_peer(t0, &peer("c0", Role::Active, 7)), Verdict::Follow);
        assert_eq!(e.role(), Role::Standby);
        // Heartbeats every half second keep it a standby for a minute.
        let mut now = t0;
        for _ in 0..120 {
            now += Duration::from_millis(500);
            e.on_heard(now, 7);
            assert_eq!(e.on_tick(now), Verdict::Stay);
        }
        assert_eq!(e.on_tick(now + Duration::from_millis(2999)), Verdict::Stay);
        assert_eq!(e.on_tick(now + WAIT), Verdict::TakeOver);
        assert_eq!(e.take_over(), 8, "one above the active's term");
    }

    #[test]
    fn two_nodes_starting_together_settle_on_the_lower_name() {
        let t0 = Instant::now();
        let mut c0 = Election::new("c0", 0, t0, WAIT);
        let mut c1 = Election::new("c1", 0, t0, WAIT);
        assert_eq!(c1.on_peer(t0, &c0.state()), Verdict::Stay);
        assert_eq!(c0.on_peer(t0, &c1.state()), Verdict::TakeOver);
        assert_eq!(c0.take_over(), 1);
        assert_eq!(c1.on_peer(t0, &c0.state()), Verdict::Follow);
        // The node whose store is further along wins over the lower name,
        // and takes a term above both.
        let mut c0 = Election::new("c0", 2, t0, WAIT);
        let mut c1 = Election::new("c1", 5, t0, WAIT);
        c0.set_tip(2, 40);
        c1.set_tip(2, 41);
        assert_eq!(c0.on_peer(t0, &c1.state()), Verdict::Stay);
        assert_eq!(c1.on_peer(t0, &c0.state()), Verdict::TakeOver);
        assert_eq!(c0.on_tick(t0 + WAIT), Verdict::TakeOver);
        assert_eq!(c0.take_over(), 6, "above the peer's term, not only its own");
        // A standby does not take over from a peer that is not active.
        let mut lone = Election::new("c1", 0, t0, WAIT);
        assert_eq!(
            lone.on_peer(t0, &peer("c0", Role::Standby, 3)),
            Verdict::Stay
        );
    }

    #[test]
    fn two_actives_keep_the_higher_term_then_the_lower_name() {
        let t0 = Instant::now();
        let active = |node: &str, term: u64| {
            let mut e = Election::new(node, term - 1, t0, WAIT);
            e.take_over();
            e
        };
        let (mut old, mut new) = (active("c0", 3), active("c1", 4));
        assert_eq!(old.on_peer(t0, &new.state()), Verdict::StepDown);
        assert_eq!(new.on_peer(t0, &old.state()), Verdict::Stay);
        let (mut c0, mut c1) = (active("c0", 4), active("c1", 4));
        assert_eq!(c1.on_peer(t0, &c0.state()), Verdict::StepDown);
        assert_eq!(c0.on_peer(t0, &c1.state()), Verdict::Stay);
    }
}
