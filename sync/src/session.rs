//! The sans-IO sync session between a site and its region.
//!
//! One [`Session`] lives per connection. It owns no socket and reads no
//! clock: the transport feeds it frames with [`Session::handle_message`],
//! drains frames with [`Session::poll_message`], calls
//! [`Session::handle_timeout`] at the deadline [`Session::poll_timeout`]
//! gives, and tells it about local writes with [`Session::local_change`].
//!
//! It runs Automerge's sync protocol once per document (intent and status)
//! and adds what Roost needs around it:
//! - **Only the site writes status.** Both ends refuse status changes not
//!   made by one of the site's own status actors (`status:<site>`, or one
//!   of its edge HA terms'): a site takes back only its own changes that
//!   another of its nodes sent. A refused message changes nothing.
//! - **Bounded frames.** No frame exceeds [`SessionConfig::max_frame`]; a
//!   larger sync message travels as fragments and is reassembled (up to
//!   [`SessionConfig::max_message`]) before it is applied.
//! - **Cheap when idle, quick when busy.** Local writes within
//!   [`SessionConfig::coalesce`] of each other go out in one round; nothing is
//!   sent while both sides agree.
//! - **Compressed.** Sync messages of 128 bytes or more travel
//!   zstd-compressed (a codec byte leads each message); decompression is
//!   bounded by [`SessionConfig::max_message`].
//! - **Resumable.** [`Session::persist`] gives each document's sync state;
//!   a session made from it after a reconnect or a crash sends only what the
//!   peer lacks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use automerge::sync::{Message, State, SyncDoc};
use automerge::ChangeHash;

use crate::doc::{IntentDoc, StatusDoc};
use crate::frame::{self, DocId, Frame, FrameError, HEADER};

/// Which end of the link this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Site,
    Region,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest frame sent or accepted, header included. At least 1 KiB.
    pub max_frame: usize,
    /// Largest sync message reassembled from fragments.
    pub max_message: usize,
    /// How long local writes are gathered before a sync round.
    pub coalesce: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_frame: 1 << 20,
            max_message: 256 << 20,
            coalesce: Duration::from_millis(20),
        }
    }
}

impl SessionConfig {
    pub fn validate(&self) -> Result<(), SessionError> {
        if self.max_frame < 1024 || self.max_frame > (1 << 30) {
            return Err(SessionError::Config(format!(
                "max_frame must be between 1 KiB and 1 GiB (got {})",
                self.max_frame
            )));
        }
        if self.max_message < self.max_frame {
            return Err(SessionError::Config(
                "max_message must be at least max_frame".into(),
            ));
        }
        Ok(())
    }
}

/// A site's two documents, and whose status changes are genuine.
#[derive(Debug, Clone)]
pub struct Docs {
    pub intent: IntentDoc,
    pub status: StatusDoc,
    /// The Automerge actor the site writes status with.
    pub site_status_actor: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("bad sync message for the {doc:?} document: {reason}")]
    Message { doc: DocId, reason: String },
    #[error("refused: {0}")]
    Refused(String),
    #[error("fragment out of order: {0}")]
    Fragment(String),
    #[error("bad persisted sync state: {0}")]
    State(String),
    #[error("invalid session config: {0}")]
    Config(String),
}

/// What a handled frame did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// The intent document changed: reconcilers have work.
    pub intent_changed: bool,
    /// The status document changed.
    pub status_changed: bool,
}

/// Sync state to keep across connections, per document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persisted {
    pub intent: Vec<u8>,
    pub status: Vec<u8>,
}

impl Persisted {
    /// The heads both sides shared when this state was saved (empty for a
    /// state that cannot be read: the peer is then assumed to have nothing).
    pub fn peer_heads(&self) -> [Vec<ChangeHash>; 2] {
        [&self.intent, &self.status]
            .map(|b| State::decode(b).map(|s| s.shared_heads).unwrap_or_default())
    }
}

#[derive(Debug)]
struct Partial {
    doc: DocId,
    id: u32,
    count: u16,
    next: u16,
    buf: Vec<u8>,
}

/// Bytes and frames moved, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub frames_out: u64,
    pub bytes_out: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
}

#[derive(Debug)]
pub struct Session {
    role: Role,
    cfg: SessionConfig,
    states: [State; 2],
    out: VecDeque<Vec<u8>>,
    partial: Option<Partial>,
    next_id: u32,
    flush_at: Option<Instant>,
    stats: Stats,
}

/// A sync message on the wire: one codec byte, then the message, raw (0)
/// or zstd-compressed (1). Automerge's changes repeat field names, ids and
/// values across a catch-up, so compression roughly halves what a long
/// catch-up sends; messages under [`COMPRESS_FROM`] bytes go raw.
const RAW: u8 = 0;
const ZSTD: u8 = 1;
const COMPRESS_FROM: usize = 128;

fn pack(message: &[u8]) -> Vec<u8> {
    if message.len() >= COMPRESS_FROM {
        if let Ok(z) = zstd::bulk::compress(message, 3) {
            if z.len() < message.len() {
                let mut out = Vec::with_capacity(1 + z.len());
                out.push(ZSTD);
                out.extend_from_slice(&z);
                return out;
            }
        }
    }
    let mut out = Vec::with_capacity(1 + message.len());
    out.push(RAW);
    out.extend_from_slice(message);
    out
}

/// The message inside a packed payload; refuses unknown codecs and
/// anything that would decompress past `max` bytes.
fn unpack(payload: &[u8], max: usize) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    match payload.split_first() {
        Some((&RAW, rest)) => Ok(std::borrow::Cow::Borrowed(rest)),
        Some((&ZSTD, rest)) => zstd::bulk::decompress(rest, max)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| format!("bad compressed message (or over {max} bytes): {e}")),
        Some((c, _)) => Err(format!("unknown message codec {c}")),
        None => Err("empty message".into()),
    }
}

fn doc_index(d: DocId) -> usize {
    d as usize
}

impl Session {
    /// A session for a new connection. With `persisted`, only what the peer
    /// lacks since the last session is sent.
    pub fn new(
        role: Role,
        cfg: SessionConfig,
        persisted: Option<&Persisted>,
        now: Instant,
    ) -> Result<Self, SessionError> {
        cfg.validate()?;
        let decode = |b: &[u8]| {
            if b.is_empty() {
                Ok(State::new())
            } else {
                State::decode(b).map_err(|e| SessionError::State(e.to_string()))
            }
        };
        let states = match persisted {
            Some(p) => [decode(&p.intent)?, decode(&p.status)?],
            None => [State::new(), State::new()],
        };
        Ok(Session {
            role,
            cfg,
            states,
            out: VecDeque::new(),
            partial: None,
            next_id: 0,
            flush_at: Some(now),
            stats: Stats::default(),
        })
    }

    /// The heads the peer last said it has, per document (intent,
    /// status); before it said anything, those both sides shared at the
    /// end of the last session.
    pub fn peer_heads(&self) -> [Vec<ChangeHash>; 2] {
        self.states.each_ref().map(|s| {
            s.their_heads
                .clone()
                .unwrap_or_else(|| s.shared_heads.clone())
        })
    }

    /// Which end of the link this session is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the peer has said which heads it has, for both documents,
    /// in this session. Until it has, [`Session::peer_heads`] is only what
    /// it had at the end of the last session: it may have changed since.
    pub fn heard_peer(&self) -> bool {
        self.states.iter().all(|s| s.their_heads.is_some())
    }

    pub fn persist(&self) -> Persisted {
        Persisted {
            intent: self.states[0].encode(),
            status: self.states[1].encode(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Tells the session the documents changed locally.
    pub fn local_change(&mut self, now: Instant) {
        let at = now + self.cfg.coalesce;
        self.flush_at = Some(self.flush_at.map_or(at, |t| t.min(at)));
    }

    /// When [`Session::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.flush_at
    }

    /// Runs a sync round if one is due.
    pub fn handle_timeout(&mut self, docs: &mut Docs, now: Instant) {
        if self.flush_at.is_some_and(|t| t <= now) {
            self.flush_at = None;
            self.generate(docs);
        }
    }

    /// The next frame to send.
    pub fn poll_message(&mut self) -> Option<Vec<u8>> {
        let f = self.out.pop_front()?;
        self.stats.frames_out += 1;
        self.stats.bytes_out += f.len() as u64;
        Some(f)
    }

    /// Whether the peer has said it holds exactly our heads of both
    /// documents, and nothing is waiting to be sent.
    pub fn in_sync(&self, docs: &mut Docs) -> bool {
        let heads = [
            docs.intent.automerge().get_heads(),
            docs.status.automerge().get_heads(),
        ];
        self.out.is_empty()
            && self.flush_at.is_none()
            && self.states.iter().zip(heads).all(|(s, h)| {
                let mut theirs = s.their_heads.clone().unwrap_or_default();
                let mut ours = h;
                theirs.sort();
                ours.sort();
                theirs == ours
            })
    }

    fn generate(&mut self, docs: &mut Docs) {
        for doc in [DocId::Intent, DocId::Status] {
            let state = &mut self.states[doc_index(doc)];
            let am = match doc {
                DocId::Intent => docs.intent.automerge(),
                DocId::Status => docs.status.automerge(),
            };
            while let Some(msg) = am.sync().generate_sync_message(state) {
                let bytes = pack(&msg.encode());
                if bytes.len() + HEADER <= self.cfg.max_frame {
                    self.out.push_back(frame::encode_sync(doc, &bytes));
                    continue;
                }
                let room = self.cfg.max_frame - HEADER - frame::FRAGMENT_HEADER;
                let count = bytes.len().div_ceil(room);
                let Ok(count) = u16::try_from(count) else {
                    tracing::error!(
                        bytes = bytes.len(),
                        "sync message too large to fragment; raise max_frame"
                    );
                    break;
                };
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1);
                for (i, chunk) in bytes.chunks(room).enumerate() {
                    self.out
                        .push_back(frame::encode_fragment(doc, id, i as u16, count, chunk));
                }
            }
        }
    }

    /// Handles one frame from the peer. An `Err` means the frame (or the
    /// message it completed) was refused and nothing changed; the caller
    /// logs it and may drop the connection.
    pub fn handle_message(
        &mut self,
        docs: &mut Docs,
        bytes: &[u8],
        now: Instant,
    ) -> Result<Received, SessionError> {
        self.stats.frames_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let received = match frame::decode(bytes, self.cfg.max_frame)? {
            Frame::Sync { doc, message } => {
                self.partial = None;
                self.apply(docs, doc, message)?
            }
            Frame::Fragment {
                doc,
                message_id,
                index,
                count,
                bytes,
            } => {
                if index == 0 {
                    self.partial = Some(Partial {
                        doc,
                        id: message_id,
                        count,
                        next: 0,
                        buf: Vec::new(),
                    });
                }
                let p = self.partial.as_mut().ok_or_else(|| {
                    SessionError::Fragment(format!(
                        "fragment {index} of message {message_id} without its start"
                    ))
                })?;
                if (p.doc, p.id, p.count, p.next) != (doc, message_id, count, index) {
                    self.partial = None;
                    return Err(SessionError::Fragment(format!(
                        "got fragment {index}/{count} of message {message_id}"
                    )));
                }
                if p.buf.len() + bytes.len() > self.cfg.max_message {
                    self.partial = None;
                    return Err(SessionError::Refused(format!(
                        "message over the {} byte limit",
                        self.cfg.max_message
                    )));
                }
                p.buf.extend_from_slice(bytes);
                p.next += 1;
                if p.next < p.count {
                    return Ok(Received::default());
                }
                let whole = self.partial.take().map(|p| p.buf).unwrap_or_default();
                self.apply(docs, doc, &whole)?
            }
        };
        // Answer at once: the protocol needs a reply to make progress.
        self.flush_at = Some(now);
        self.handle_timeout(docs, now);
        Ok(received)
    }

    fn apply(
        &mut self,
        docs: &mut Docs,
        doc: DocId,
        bytes: &[u8],
    ) -> Result<Received, SessionError> {
        let bytes = unpack(bytes, self.cfg.max_message)
            .map_err(|reason| SessionError::Message { doc, reason })?;
        let message = Message::decode(&bytes).map_err(|e| SessionError::Message {
            doc,
            reason: e.to_string(),
        })?;
        let bad = |reason: String| SessionError::Message { doc, reason };
        let state = &mut self.states[doc_index(doc)];
        match doc {
            DocId::Intent => {
                let am = docs.intent.automerge();
                let before = am.get_heads();
                am.sync()
                    .receive_sync_message(state, message)
                    .map_err(|e| bad(e.to_string()))?;
                Ok(Received {
                    intent_changed: am.get_heads() != before,
                    status_changed: false,
                })
            }
            DocId::Status => {
                // Try on a copy; keep it only if every new change is the
                // site's own. A site takes status back only from itself:
                // changes another of its nodes wrote (edge HA) that reached
                // the region before this node held them.
                let mut trial = docs.status.clone();
                let mut trial_state = state.clone();
                let am = trial.automerge();
                let before = am.get_heads();
                am.sync()
                    .receive_sync_message(&mut trial_state, message)
                    .map_err(|e| bad(e.to_string()))?;
                let site = crate::doc::plain_site_status_actor(&docs.site_status_actor);
                if let Some(c) = am
                    .get_changes(&before)
                    .iter()
                    .find(|c| !crate::doc::is_site_status_actor(site, c.actor_id().to_bytes()))
                {
                    return Err(SessionError::Refused(format!(
                        "status change by actor {} is not the site's",
                        c.actor_id()
                    )));
                }
                let changed = am.get_heads() != before;
                docs.status = trial;
                *state = trial_state;
                Ok(Received {
                    intent_changed: false,
                    status_changed: changed,
                })
            }
        }
    }
}

#[cfg(test)]
mod codec_tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_payloads_are_refused() {
        let small = b"tiny".to_vec();
        assert_eq!(pack(&small)[0], RAW);
        let big = b"servers/0001/name ".repeat(100);
        let packed = pack(&big);
        assert_eq!(packed[0], ZSTD);
        assert!(packed.len() < big.len() / 4);
        assert_eq!(unpack(&packed, 1 << 20).unwrap().as_ref(), big.as_slice());
        assert_eq!(
            unpack(&pack(&small), 16).unwrap().as_ref(),
            small.as_slice()
        );
        // A small payload that would inflate past the limit is refused.
        let bomb = pack(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 1024);
        assert!(unpack(&bomb, 64 << 10)
            .unwrap_err()
            .contains("over 65536 bytes"));
        assert!(unpack(&[9, 1, 2], 100).unwrap_err().contains("codec 9"));
        assert!(unpack(&[], 100).is_err());
        assert!(unpack(&[ZSTD, 1, 2, 3], 100).is_err());
    }
}
