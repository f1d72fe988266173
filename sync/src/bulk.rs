//! Bulk transfer: image chunks from the region to a site, on QUIC streams
//! of their own at [`PRIORITY_BULK`], below document sync, so a sync frame
//! never waits behind an image.
//!
//! The site asks, the region answers, on one bidirectional stream per
//! image: first the image's [`Manifest`], then batches of chunks by name.
//! The site asks only for chunks it has nowhere on disk, and checks every
//! chunk against its name, so a transfer cut anywhere resumes by asking
//! for what is still missing. [`Pacer`] spaces the site's requests so the
//! bytes it asks for stay under its configured rate.
//!
//! Frames: a 4-byte big-endian length, then a type byte and its body.
//! Requests: `0x01` manifest (image id), `0x02` chunks (image id, count,
//! hashes). Replies: `0x81` manifest, `0x82` chunk (hash, bytes), `0x8f`
//! error (text). Anything else, or over the limits, ends the stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::chunks::{Hash, Manifest, MAX_CHUNK};
use crate::transport::{TransportError, PRIORITY_BULK};

/// Most chunks one request names.
pub const MAX_BATCH: usize = 1024;
/// Largest frame: the largest manifest.
pub const MAX_FRAME: usize = 40 + 36 * crate::chunks::MAX_CHUNKS;
const MAX_ID: usize = 128;
const MAX_ERROR: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Manifest { image: String },
    Chunks { image: String, hashes: Vec<Hash> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Manifest(Manifest),
    Chunk { hash: Hash, data: Vec<u8> },
    Error(String),
}

fn bad(m: impl Into<String>) -> TransportError {
    TransportError::Quic(format!("bulk frame: {}", m.into()))
}

fn image_id(bytes: &[u8]) -> Result<String, TransportError> {
    if bytes.is_empty() || bytes.len() > MAX_ID {
        return Err(bad("an image id of 1 to 128 bytes"));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| bad("an image id that is not UTF-8"))
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Manifest { image } => [&[0x01], image.as_bytes()].concat(),
            Request::Chunks { image, hashes } => {
                let mut out = vec![0x02];
                out.extend_from_slice(&(image.len() as u16).to_be_bytes());
                out.extend_from_slice(image.as_bytes());
                out.extend_from_slice(&(hashes.len() as u32).to_be_bytes());
                for h in hashes {
                    out.extend_from_slice(h);
                }
                out
            }
        }
    }

    pub fn decode(b: &[u8]) -> Result<Request, TransportError> {
        match b.split_first() {
            Some((0x01, id)) => Ok(Request::Manifest {
                image: image_id(id)?,
            }),
            Some((0x02, rest)) => {
                let n = u16::from_be_bytes(
                    rest.get(..2)
                        .ok_or_else(|| bad("short chunks request"))?
                        .try_into()
                        .map_err(|_| bad("short chunks request"))?,
                ) as usize;
                let id = rest.get(2..2 + n).ok_or_else(|| bad("short image id"))?;
                let rest = &rest[2 + n..];
                let count = u32::from_be_bytes(
                    rest.get(..4)
                        .ok_or_else(|| bad("no chunk count"))?
                        .try_into()
                        .map_err(|_| bad("no chunk count"))?,
                ) as usize;
                if count == 0 || count > MAX_BATCH {
                    return Err(bad(format!("asks for {count} chunks (1 to {MAX_BATCH})")));
                }
                let body = &rest[4..];
                if body.len() != count * 32 {
                    return Err(bad("chunk count and hashes disagree"));
                }
                let hashes = body
                    .chunks_exact(32)
                    .map(|h| h.try_into().map_err(|_| bad("short hash")))
                    .collect::<Result<_, _>>()?;
                Ok(Request::Chunks {
                    image: image_id(id)?,
                    hashes,
                })
            }
            _ => Err(bad("unknown request type")),
        }
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Manifest(m) => [&[0x81][..], &m.encode()].concat(),
            Reply::Chunk { hash, data } => [&[0x82][..], hash, data].concat(),
            Reply::Error(e) => {
                let e = &e.as_bytes()[..e.len().min(MAX_ERROR)];
                [&[0x8f][..], e].concat()
            }
        }
    }

    pub fn decode(b: &[u8]) -> Result<Reply, TransportError> {
        match b.split_first() {
            Some((0x81, m)) => Manifest::decode(m)
                .map(Reply::Manifest)
                .map_err(|e| bad(e.to_string())),
            Some((0x82, rest)) if rest.len() > 32 && rest.len() <= 32 + MAX_CHUNK => {
                Ok(Reply::Chunk {
                    hash: rest[..32].try_into().map_err(|_| bad("short hash"))?,
                    data: rest[32..].to_vec(),
                })
            }
            Some((0x82, _)) => Err(bad("a chunk of 1 to 32 KiB after its hash")),
            Some((0x8f, e)) if e.len() <= MAX_ERROR => {
                Ok(Reply::Error(String::from_utf8_lossy(e).into_owned()))
            }
            _ => Err(bad("unknown reply type")),
        }
    }
}

async fn write_frame(send: &mut quinn::SendStream, body: &[u8]) -> Result<(), TransportError> {
    send.write_all(&(body.len() as u32).to_be_bytes()).await?;
    send.write_all(body).await?;
    Ok(())
}

/// Largest request: a chunks request of [`MAX_BATCH`] names.
const MAX_REQUEST: usize = 1 + 2 + MAX_ID + 4 + 32 * MAX_BATCH;

/// The next frame of at most `max` bytes, or `None` when the peer
/// finished the stream.
async fn read_frame(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<Vec<u8>>, TransportError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(TransportError::Oversized(n, max));
    }
    let mut buf = vec![0u8; n];
    recv.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

/// Where the region reads what it serves. Blocking; called on blocking
/// threads.
pub trait ChunkSource: Send + Sync + 'static {
    /// The manifest of an image this site may fetch.
    fn manifest(&self, site: &str, image: &str) -> Result<Manifest, String>;
    /// One chunk of that image, by name.
    fn chunk(&self, site: &str, image: &str, hash: &Hash) -> Result<Vec<u8>, String>;
}

/// The region's side of one bulk stream: answers requests until the site
/// finishes the stream. Returns the chunk bytes sent.
pub async fn serve(
    site: String,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    source: Arc<dyn ChunkSource>,
) -> Result<u64, TransportError> {
    send.set_priority(PRIORITY_BULK).ok();
    let mut sent = 0u64;
    while let Some(frame) = read_frame(&mut recv, MAX_REQUEST).await? {
        let (image, asked) = match Request::decode(&frame)? {
            Request::Manifest { image } => (image, None),
            Request::Chunks { image, hashes } => (image, Some(hashes)),
        };
        // One reply at a time, read and written before the next: what is
        // held in memory is one chunk (or the manifest), whatever is asked.
        let Some(hashes) = asked else {
            let (src, s) = (source.clone(), site.clone());
            let reply = tokio::task::spawn_blocking(move || match src.manifest(&s, &image) {
                Ok(m) => Reply::Manifest(m),
                Err(e) => Reply::Error(e),
            })
            .await
            .map_err(|e| bad(e.to_string()))?;
            write_frame(&mut send, &reply.encode()).await?;
            continue;
        };
        for h in hashes {
            let (src, s, img) = (source.clone(), site.clone(), image.clone());
            let reply = tokio::task::spawn_blocking(move || match src.chunk(&s, &img, &h) {
                Ok(data) => Reply::Chunk { hash: h, data },
                Err(e) => Reply::Error(e),
            })
            .await
            .map_err(|e| bad(e.to_string()))?;
            let failed = matches!(reply, Reply::Error(_));
            if let Reply::Chunk { data, .. } = &reply {
                sent += data.len() as u64;
            }
            write_frame(&mut send, &reply.encode()).await?;
            if failed {
                break;
            }
        }
    }
    send.finish().ok();
    Ok(sent)
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the region refused: {0}")]
    Refused(String),
    #[error("the region sent {0}")]
    Unexpected(String),
}

/// The site's side of one bulk stream.
#[derive(Debug)]
pub struct BulkClient {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Chunk bytes received on this stream.
    pub received: u64,
}

impl BulkClient {
    /// Opens a bulk stream on the site's connection to its region.
    pub async fn open(conn: &quinn::Connection) -> Result<BulkClient, FetchError> {
        let (send, recv) = conn.open_bi().await.map_err(TransportError::from)?;
        send.set_priority(PRIORITY_BULK).ok();
        Ok(BulkClient {
            send,
            recv,
            received: 0,
        })
    }

    async fn reply(&mut self) -> Result<Reply, FetchError> {
        let frame = read_frame(&mut self.recv, MAX_FRAME)
            .await?
            .ok_or_else(|| FetchError::Unexpected("the end of the stream".into()))?;
        match Reply::decode(&frame)? {
            Reply::Error(e) => Err(FetchError::Refused(e)),
            r => Ok(r),
        }
    }

    pub async fn manifest(&mut self, image: &str) -> Result<Manifest, FetchError> {
        let req = Request::Manifest {
            image: image.into(),
        };
        write_frame(&mut self.send, &req.encode()).await?;
        match self.reply().await? {
            Reply::Manifest(m) => Ok(m),
            _ => Err(FetchError::Unexpected(
                "a chunk where a manifest was due".into(),
            )),
        }
    }

    /// Asks for `hashes`; the chunks come back in order, read with
    /// [`BulkClient::take`]. Several requests may be in flight, so the link
    /// stays busy across the round trip.
    pub async fn ask(&mut self, image: &str, hashes: &[Hash]) -> Result<(), FetchError> {
        let req = Request::Chunks {
            image: image.into(),
            hashes: hashes.to_vec(),
        };
        write_frame(&mut self.send, &req.encode()).await?;
        Ok(())
    }

    /// Reads the chunks of the oldest request not yet read (`hashes`, as
    /// asked) and hands each, checked against its name, to `each`.
    pub async fn take(
        &mut self,
        hashes: &[Hash],
        mut each: impl FnMut(&Hash, &[u8]) -> Result<(), String>,
    ) -> Result<(), FetchError> {
        for want in hashes {
            match self.reply().await? {
                Reply::Chunk { hash, data } => {
                    let got: Hash = Sha256::digest(&data).into();
                    if hash != *want || got != *want {
                        return Err(FetchError::Unexpected(
                            "a chunk that does not match its name".into(),
                        ));
                    }
                    self.received += data.len() as u64;
                    each(&hash, &data).map_err(FetchError::Refused)?;
                }
                _ => {
                    return Err(FetchError::Unexpected(
                        "a manifest where a chunk was due".into(),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Ends the stream.
    pub fn finish(mut self) {
        self.send.finish().ok();
    }
}

/// Spaces requests so the bytes asked for average at most `rate` bytes a
/// second. Sans-IO: the caller passes the time and sleeps what it is told.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: Option<u64>,
    next: Option<Instant>,
}

impl Pacer {
    /// `bits_per_s`: `None` for no limit.
    pub fn new(bits_per_s: Option<u64>) -> Pacer {
        Pacer {
            rate: bits_per_s.map(|b| (b / 8).max(1)),
            next: None,
        }
    }

    /// How long to wait before asking for `bytes` more at `now`.
    pub fn delay(&mut self, bytes: u64, now: Instant) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        let start = self.next.map_or(now, |n| n.max(now));
        self.next = Some(start + Duration::from_secs_f64(bytes as f64 / rate as f64));
        start - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        let m = Manifest::of_reader(&vec![7u8; 100_000][..]).unwrap();
        for r in [
            Request::Manifest {
                image: "img-1".into(),
            },
            Request::Chunks {
                image: "img-1".into(),
                hashes: vec![[1; 32], [2; 32]],
            },
        ] {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        for r in [
            Reply::Manifest(m),
            Reply::Chunk {
                hash: [3; 32],
                data: vec![9; 100],
            },
            Reply::Error("no such image".into()),
        ] {
            assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        }
        let too_many = Request::Chunks {
            image: "i".into(),
            hashes: vec![[0; 32]; MAX_BATCH + 1],
        };
        for bad in [
            vec![],
            vec![0x01],
            vec![0x07, 1, 2],
            too_many.encode(),
            Request::Chunks {
                image: "i".into(),
                hashes: vec![[0; 32]],
            }
            .encode()[..20]
                .to_vec(),
        ] {
            assert!(Request::decode(&bad).is_err(), "{bad:?}");
        }
        let mut big = vec![0x82];
        big.extend(vec![0u8; 32 + MAX_CHUNK + 1]);
        for bad in [vec![0x82; 10], big, vec![0x80]] {
            assert!(Reply::decode(&bad).is_err());
        }
    }

    #[test]
    fn the_pacer_holds_the_rate_and_does_not_bank_idle_time() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Some(8_000_000)); // 1 MB/s
        assert_eq!(p.delay(500_000, t0), Duration::ZERO);
        assert_eq!(p.delay(500_000, t0), Duration::from_millis(500));
        assert_eq!(p.delay(1_000_000, t0), Duration::from_secs(1));
        // After a long pause, no burst beyond one request.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(p.delay(1_000_000, later), Duration::ZERO);
        assert_eq!(p.delay(1, later), Duration::from_secs(1));
        let mut free = Pacer::new(None);
        assert_eq!(free.delay(u64::MAX, t0), Duration::ZERO);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = Request::decode(&bytes);
            let _ = Reply::decode(&bytes);
        }
    }
}
