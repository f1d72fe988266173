//! The peer link's messages: a tag byte and fixed big-endian fields, each
//! frame sent as a 4-byte length and the message. Decoding checks every
//! length and names what is wrong; it never panics on any input.

use super::log::{Entry, Tip};
use super::role::Role;

/// Largest frame either side accepts (a batch's changeset must fit).
pub const MAX_FRAME: usize = 64 << 20;
/// Snapshot bytes per frame.
pub const SNAPSHOT_PART: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// The first message each way: who speaks and what it holds.
    Hello {
        node: String,
        role: Role,
        term: u64,
        tip: Tip,
    },
    /// Active to standby: the next batch.
    Entry(Entry),
    /// Standby to active: everything up to `seq` is durable here.
    Ack { seq: u64 },
    /// Active to standby, when there is nothing to send.
    Heartbeat { term: u64 },
    /// Active to standby: the next piece of a whole copy of the store.
    SnapshotPart(Vec<u8>),
    /// The copy is whole: its length, SHA-256 and the tip it holds.
    SnapshotEnd {
        tip: Tip,
        len: u64,
        sha256: [u8; 32],
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("unknown message tag {0}")]
    Tag(u8),
    #[error("{what}: message ends early")]
    Short { what: &'static str },
    #[error("{what}: {rule}")]
    Invalid {
        what: &'static str,
        rule: &'static str,
    },
    #[error("{what}: {extra} bytes after the message")]
    Trailing { what: &'static str, extra: usize },
}

const HELLO: u8 = 1;
const ENTRY: u8 = 2;
const ACK: u8 = 3;
const HEARTBEAT: u8 = 4;
const PART: u8 = 5;
const SNAPSHOT_END: u8 = 6;

fn role_byte(r: Role) -> u8 {
    match r {
        Role::Waiting => 0,
        Role::Standby => 1,
        Role::Active => 2,
    }
}

impl Msg {
    /// The message, without the length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Msg::Hello {
                node,
                role,
                term,
                tip,
            } => {
                b.push(HELLO);
                let name = &node.as_bytes()[..node.len().min(255)];
                b.push(name.len() as u8);
                b.extend_from_slice(name);
                b.push(role_byte(*role));
                for v in [*term, tip.seq, tip.term] {
                    b.extend_from_slice(&v.to_be_bytes());
                }
            }
            Msg::Entry(e) => {
                b.push(ENTRY);
                b.extend_from_slice(&e.seq.to_be_bytes());
                b.extend_from_slice(&e.term.to_be_bytes());
                b.extend_from_slice(&e.changeset);
            }
            Msg::Ack { seq } => {
                b.push(ACK);
                b.extend_from_slice(&seq.to_be_bytes());
            }
            Msg::Heartbeat { term } => {
                b.push(HEARTBEAT);
                b.extend_from_slice(&term.to_be_bytes());
            }
            Msg::SnapshotPart(bytes) => {
                b.push(PART);
                b.extend_from_slice(bytes);
            }
            Msg::SnapshotEnd { tip, len, sha256 } => {
                b.push(SNAPSHOT_END);
                for v in [tip.seq, tip.term, *len] {
                    b.extend_from_slice(&v.to_be_bytes());
                }
                b.extend_from_slice(sha256);
            }
        }
        b
    }

    /// The message as a frame: a 4-byte big-endian length, then the message.
    pub fn frame(&self) -> Vec<u8> {
        let body = self.encode();
        let mut f = Vec::with_capacity(4 + body.len());
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(&body);
        f
    }

    pub fn decode(buf: &[u8]) -> Result<Msg, WireError> {
        let (&tag, rest) = buf.split_first().ok_or(WireError::Empty)?;
        let mut r = Reader {
            buf: rest,
            what: "",
        };
        let msg = match tag {
            HELLO => {
                r.what = "hello";
                let n = r.u8()? as usize;
                let node = std::str::from_utf8(r.take(n)?)
                    .map_err(|_| r.invalid("the node name is not UTF-8"))?
                    .to_string();
                let role = match r.u8()? {
                    0 => Role::Waiting,
                    1 => Role::Standby,
                    2 => Role::Active,
                    _ => return Err(r.invalid("role must be 0, 1 or 2")),
                };
                let term = r.u64()?;
                let tip = Tip {
                    seq: r.u64()?,
                    term: r.u64()?,
                };
                Msg::Hello {
                    node,
                    role,
                    term,
                    tip,
                }
            }
            ENTRY => {
                r.what = "entry";
                let seq = r.u64()?;
                let term = r.u64()?;
                if seq == 0 {
                    return Err(r.invalid("sequence numbers start at 1"));
                }
                let changeset = r.rest().to_vec();
                if changeset.is_empty() {
                    return Err(r.invalid("an entry holds a changeset"));
                }
                Msg::Entry(Entry {
                    seq,
                    term,
                    changeset,
                })
            }
            ACK => {
                r.what = "ack";
                Msg::Ack { seq: r.u64()? }
            }
            HEARTBEAT => {
                r.what = "heartbeat";
                Msg::Heartbeat { term: r.u64()? }
            }
            PART => {
                r.what = "snapshot part";
                let part = r.rest();
                if part.is_empty() || part.len() > SNAPSHOT_PART {
                    return Err(r.invalid("a part holds 1 byte to 1 MiB"));
                }
                Msg::SnapshotPart(part.to_vec())
            }
            SNAPSHOT_END => {
                r.what = "snapshot end";
                let tip = Tip {
                    seq: r.u64()?,
                    term: r.u64()?,
                };
                let len = r.u64()?;
                let mut sha256 = [0u8; 32];
                sha256.copy_from_slice(r.take(32)?);
                Msg::SnapshotEnd { tip, len, sha256 }
            }
            other => return Err(WireError::Tag(other)),
        };
        if !r.buf.is_empty() {
            return Err(WireError::Trailing {
                what: r.what,
                extra: r.buf.len(),
            });
        }
        Ok(msg)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Short { what: self.what });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn invalid(&self, rule: &'static str) -> WireError {
        WireError::Invalid {
            what: self.what,
            rule,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Msg> {
        vec![
            Msg::Hello {
                node: "controller-1".into(),
                role: Role::Standby,
                term: 7,
                tip: Tip { seq: 40, term: 6 },
            },
            Msg::Entry(Entry {
                seq: 41,
                term: 7,
                changeset: vec![1, 2, 3],
            }),
            Msg::Ack { seq: 41 },
            Msg::Heartbeat { term: 7 },
            Msg::SnapshotPart(vec![9; 10]),
            Msg::SnapshotEnd {
                tip: Tip { seq: 41, term: 7 },
                len: 10,
                sha256: [3; 32],
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
            let f = m.frame();
            assert_eq!(
                u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
                f.len() - 4
            );
        }
    }

    #[test]
    fn bad_messages_are_named() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "empty message"),
            (vec![99], "unknown message tag 99"),
            (vec![ACK, 0, 0], "ack: message ends early"),
            (
                [&[ACK][..], &[0; 9]].concat(),
                "ack: 1 bytes after the message",
            ),
            (
                [&[ENTRY][..], &[0; 16], &[1]].concat(),
                "entry: sequence numbers start at 1",
            ),
            (
                [&[HELLO, 1, b'a', 3][..], &[0; 24]].concat(),
                "hello: role must be 0, 1 or 2",
            ),
            (vec![PART], "snapshot part: a part holds 1 byte to 1 MiB"),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                Msg::decode(&bytes).unwrap_err().to_string(),
                want,
                "{bytes:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Msg::decode(&bytes);
        }

        #[test]
        fn a_cut_message_is_refused(cut in 0usize..60) {
            for m in samples() {
                let b = m.encode();
                if cut < b.len() {
                    // Parts and entries end where their bytes end, so a cut
                    // one is another valid message or an error, never a panic.
                    if let Ok(d) = Msg::decode(&b[..cut]) {
                        prop_assert!(matches!(d, Msg::SnapshotPart(_) | Msg::Entry(_)));
                    }
                }
            }
        }
    }
}
