//! Wire frames.
//!
//! ```text
//! magic "RS" | version (1) | kind (1) | doc (1) | length (u32, big endian) | payload
//! ```
//!
//! `kind` 0 carries a whole Automerge sync message; kind 1 carries one
//! fragment of a message too large for one frame (payload: message id u32,
//! index u16, count u16, bytes). `doc` is 0 for intent, 1 for status. The
//! decoder refuses anything else with an error that says what was wrong;
//! it never panics and never allocates more than the frame it was given.

/// Bytes before the payload.
pub const HEADER: usize = 9;
const MAGIC: &[u8; 2] = b"RS";
/// 2: messages carry a codec byte (see the session's `pack`).
pub const VERSION: u8 = 2;
/// Bytes of a fragment's own header inside the payload.
pub const FRAGMENT_HEADER: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocId {
    Intent = 0,
    Status = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Sync {
        doc: DocId,
        message: &'a [u8],
    },
    Fragment {
        doc: DocId,
        message_id: u32,
        index: u16,
        count: u16,
        bytes: &'a [u8],
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("truncated frame: {got} bytes, need at least {need}")]
    Truncated { got: usize, need: usize },
    #[error("not a Roost sync frame (bad magic)")]
    BadMagic,
    #[error("frame version {0} is not supported (this side speaks {VERSION})")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("unknown document {0}")]
    Doc(u8),
    #[error("frame length field says {said} bytes but {got} follow")]
    Length { said: usize, got: usize },
    #[error("frame of {0} bytes is over the limit of {1}")]
    Oversized(usize, usize),
    #[error("fragment {index} of {count} is out of range")]
    Fragment { index: u16, count: u16 },
}

fn header(kind: u8, doc: DocId, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + len);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.push(doc as u8);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out
}

pub fn encode_sync(doc: DocId, message: &[u8]) -> Vec<u8> {
    let mut out = header(0, doc, message.len());
    out.extend_from_slice(message);
    out
}

pub fn encode_fragment(
    doc: DocId,
    message_id: u32,
    index: u16,
    count: u16,
    bytes: &[u8],
) -> Vec<u8> {
    let mut out = header(1, doc, FRAGMENT_HEADER + bytes.len());
    out.extend_from_slice(&message_id.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Decodes one whole frame of at most `max` bytes.
pub fn decode(buf: &[u8], max: usize) -> Result<Frame<'_>, FrameError> {
    if buf.len() > max {
        return Err(FrameError::Oversized(buf.len(), max));
    }
    if buf.len() < HEADER {
        return Err(FrameError::Truncated {
            got: buf.len(),
            need: HEADER,
        });
    }
    if &buf[..2] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if buf[2] != VERSION {
        return Err(FrameError::Version(buf[2]));
    }
    let doc = match buf[4] {
        0 => DocId::Intent,
        1 => DocId::Status,
        d => return Err(FrameError::Doc(d)),
    };
    let said = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
    let payload = &buf[HEADER..];
    if said != payload.len() {
        return Err(FrameError::Length {
            said,
            got: payload.len(),
        });
    }
    match buf[3] {
        0 => Ok(Frame::Sync {
            doc,
            message: payload,
        }),
        1 => {
            if payload.len() < FRAGMENT_HEADER {
                return Err(FrameError::Truncated {
                    got: buf.len(),
                    need: HEADER + FRAGMENT_HEADER,
                });
            }
            let message_id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            let index = u16::from_be_bytes([payload[4], payload[5]]);
            let count = u16::from_be_bytes([payload[6], payload[7]]);
            if count < 2 || index >= count {
                return Err(FrameError::Fragment { index, count });
            }
            Ok(Frame::Fragment {
                doc,
                message_id,
                index,
                count,
                bytes: &payload[FRAGMENT_HEADER..],
            })
        }
        k => Err(FrameError::Kind(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let f = encode_sync(DocId::Status, b"hello");
        assert_eq!(
            decode(&f, 1024),
            Ok(Frame::Sync {
                doc: DocId::Status,
                message: b"hello"
            })
        );
        let f = encode_fragment(DocId::Intent, 7, 1, 3, b"xy");
        assert_eq!(
            decode(&f, 1024),
            Ok(Frame::Fragment {
                doc: DocId::Intent,
                message_id: 7,
                index: 1,
                count: 3,
                bytes: b"xy"
            })
        );
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let good = encode_sync(DocId::Intent, b"abc");
        assert_eq!(
            decode(&good[..5], 1024),
            Err(FrameError::Truncated {
                got: 5,
                need: HEADER
            })
        );
        assert_eq!(
            decode(&good[..good.len() - 1], 1024),
            Err(FrameError::Length { said: 3, got: 2 })
        );
        assert_eq!(decode(&good, 5), Err(FrameError::Oversized(good.len(), 5)));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad, 1024), Err(FrameError::BadMagic));
        let mut bad = good.clone();
        bad[2] = 9;
        assert_eq!(decode(&bad, 1024), Err(FrameError::Version(9)));
        let mut bad = good.clone();
        bad[3] = 5;
        assert_eq!(decode(&bad, 1024), Err(FrameError::Kind(5)));
        let mut bad = good;
        bad[4] = 2;
        assert_eq!(decode(&bad, 1024), Err(FrameError::Doc(2)));
        let f = encode_fragment(DocId::Intent, 1, 3, 3, b"");
        assert_eq!(
            decode(&f, 1024),
            Err(FrameError::Fragment { index: 3, count: 3 })
        );
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode(&buf, 48);
        }
    }
}
