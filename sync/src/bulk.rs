//! Bulk transfer on QUIC streams of their own at [`PRIORITY_BULK`], below
//! document sync, so a sync frame never waits behind an image: image
//! chunks from the region to a site, and volume backups from a site to
//! the region.
//!
//! The site opens every stream. To fetch an image it asks for the image's
//! [`Manifest`], then for batches of chunks by name: only chunks it has
//! nowhere on disk, each checked against its name, so a transfer cut
//! anywhere resumes by asking for what is still missing. To back a volume
//! up it offers the file's manifest, the region answers with the chunks it
//! lacks, the site sends those and commits; the region keeps every chunk
//! it received, checked, even from a stream that was cut, so the next
//! offer resumes where the cut left it. [`Pacer`] spaces what the site
//! asks for or sends so it stays under the site's configured rate.
//!
//! Frames: a 4-byte big-endian length, then a type byte and its body.
//! Requests: `0x01` manifest (image id), `0x02` chunks (image id, count,
//! hashes), `0x03` offer (u16 key length, key, manifest), `0x04` put (hash,
//! bytes), `0x05` commit (key), `0x06` forget (key: the site no longer
//! needs what it sent under it). Replies: `0x81` manifest, `0x82` chunk
//! (hash, bytes), `0x83` missing (count, hashes), `0x84` stored (u64 chunk
//! bytes received for the offer), `0x85` forgotten (u64 backups dropped),
//! `0x8f` error (text). Anything else, or
//! over the limits, ends the stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::chunks::{Hash, Manifest, MAX_CHUNK};
use crate::transport::{TransportError, PRIORITY_BULK};

/// Most chunks one request names.
pub const MAX_BATCH: usize = 1024;
/// Most chunks a backup offer lists (about 16 GiB of average chunks): what
/// one offer may cost the region in memory stays bounded.
pub const MAX_OFFER_CHUNKS: usize = 2 << 20;
/// Largest frame: the largest manifest.
pub const MAX_FRAME: usize = 40 + 36 * crate::chunks::MAX_CHUNKS;
const MAX_ID: usize = 128;
const MAX_ERROR: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Manifest {
        image: String,
    },
    Chunks {
        image: String,
        hashes: Vec<Hash>,
    },
    /// A backup of `key` (a volume id) with this manifest: which chunks
    /// does the region lack?
    Offer {
        key: String,
        manifest: Manifest,
    },
    /// One of the chunks the region said it lacks.
    Put {
        hash: Hash,
        data: Vec<u8>,
    },
    /// Every lacking chunk was sent: keep the offered backup.
    Commit {
        key: String,
    },
    /// Drop every backup kept under `key` (a snapshot the site deleted).
    Forget {
        key: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Manifest(Manifest),
    Chunk {
        hash: Hash,
        data: Vec<u8>,
    },
    /// The chunks of an offer the region lacks, in the manifest's order.
    Missing(Vec<Hash>),
    /// The backup is kept; `bytes` of chunks arrived for it on this stream.
    Stored {
        bytes: u64,
    },
    /// The backups kept under the key are gone: this many.
    Forgotten {
        backups: u64,
    },
    Error(String),
}

fn bad(m: impl Into<String>) -> TransportError {
    TransportError::Quic(format!("bulk frame: {}", m.into()))
}

fn image_id(bytes: &[u8]) -> Result<String, TransportError> {
    id("image id", bytes)
}

fn id(what: &str, bytes: &[u8]) -> Result<String, TransportError> {
    if bytes.is_empty() || bytes.len() > MAX_ID {
        return Err(bad(format!("the {what} must be 1 to {MAX_ID} bytes")));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| bad(format!("the {what} is not UTF-8")))
}

/// A chunk's hash and bytes, as a put or a chunk reply carries them.
fn chunk_body(rest: &[u8]) -> Result<(Hash, Vec<u8>), TransportError> {
    if rest.len() <= 32 || rest.len() > 32 + MAX_CHUNK {
        return Err(bad("a chunk of 1 to 32 KiB after its hash"));
    }
    Ok((
        rest[..32].try_into().map_err(|_| bad("short hash"))?,
        rest[32..].to_vec(),
    ))
}

fn hashes_body(out: &mut Vec<u8>, hashes: &[Hash]) {
    out.extend_from_slice(&(hashes.len() as u32).to_be_bytes());
    for h in hashes {
        out.extend_from_slice(h);
    }
}

/// A u32 count, then that many hashes, filling `rest` exactly.
fn read_hashes(rest: &[u8], max: usize) -> Result<Vec<Hash>, TransportError> {
    let count = u32::from_be_bytes(
        rest.get(..4)
            .ok_or_else(|| bad("no chunk count"))?
            .try_into()
            .map_err(|_| bad("no chunk count"))?,
    ) as usize;
    if count > max {
        return Err(bad(format!("names {count} chunks (at most {max})")));
    }
    let body = &rest[4..];
    if body.len() != count * 32 {
        return Err(bad("chunk count and hashes disagree"));
    }
    body.chunks_exact(32)
        .map(|h| h.try_into().map_err(|_| bad("short hash")))
        .collect()
}

/// A u16 length and that many bytes of id; the rest after it.
fn read_key<'a>(what: &str, rest: &'a [u8]) -> Result<(String, &'a [u8]), TransportError> {
    let n = u16::from_be_bytes(
        rest.get(..2)
            .ok_or_else(|| bad(format!("no {what} length")))?
            .try_into()
            .map_err(|_| bad(format!("no {what} length")))?,
    ) as usize;
    let key = rest
        .get(2..2 + n)
        .ok_or_else(|| bad(format!("short {what}")))?;
    Ok((id(what, key)?, &rest[2 + n..]))
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Manifest { image } => [&[0x01], image.as_bytes()].concat(),
            Request::Chunks { image, hashes } => {
                let mut out = vec![0x02];
                out.extend_from_slice(&(image.len() as u16).to_be_bytes());
                out.extend_from_slice(image.as_bytes());
                hashes_body(&mut out, hashes);
                out
            }
            Request::Offer { key, manifest } => {
                let mut out = vec![0x03];
                out.extend_from_slice(&(key.len() as u16).to_be_bytes());
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(&manifest.encode());
                out
            }
            Request::Put { hash, data } => [&[0x04][..], hash, data].concat(),
            Request::Commit { key } => [&[0x05], key.as_bytes()].concat(),
            Request::Forget { key } => [&[0x06], key.as_bytes()].concat(),
        }
    }

    pub fn decode(b: &[u8]) -> Result<Request, TransportError> {
        match b.split_first() {
            Some((0x01, id)) => Ok(Request::Manifest {
                image: image_id(id)?,
            }),
            Some((0x02, rest)) => {
                let (image, rest) = read_key("image id", rest)?;
                let hashes = read_hashes(rest, MAX_BATCH)?;
                if hashes.is_empty() {
                    return Err(bad(format!("asks for 0 chunks (1 to {MAX_BATCH})")));
                }
                Ok(Request::Chunks { image, hashes })
            }
            Some((0x03, rest)) => {
                let (key, rest) = read_key("backup key", rest)?;
                let manifest = Manifest::decode(rest).map_err(|e| bad(e.to_string()))?;
                if manifest.chunks.len() > MAX_OFFER_CHUNKS {
                    return Err(bad(format!(
                        "a backup of {} chunks, more than {MAX_OFFER_CHUNKS}",
                        manifest.chunks.len()
                    )));
                }
                Ok(Request::Offer { key, manifest })
            }
            Some((0x04, rest)) => {
                let (hash, data) = chunk_body(rest)?;
                Ok(Request::Put { hash, data })
            }
            Some((0x05, key)) => Ok(Request::Commit {
                key: id("backup key", key)?,
            }),
            Some((0x06, key)) => Ok(Request::Forget {
                key: id("backup key", key)?,
            }),
            _ => Err(bad("unknown request type")),
        }
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Manifest(m) => [&[0x81][..], &m.encode()].concat(),
            Reply::Chunk { hash, data } => [&[0x82][..], hash, data].concat(),
            Reply::Missing(hashes) => {
                let mut out = vec![0x83];
                hashes_body(&mut out, hashes);
                out
            }
            Reply::Stored { bytes } => [&[0x84][..], &bytes.to_be_bytes()].concat(),
            Reply::Forgotten { backups } => [&[0x85][..], &backups.to_be_bytes()].concat(),
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
            Some((0x82, rest)) => {
                let (hash, data) = chunk_body(rest)?;
                Ok(Reply::Chunk { hash, data })
            }
            Some((0x83, rest)) => Ok(Reply::Missing(read_hashes(
                rest,
                crate::chunks::MAX_CHUNKS,
            )?)),
            Some((0x84, rest)) => Ok(Reply::Stored {
                bytes: u64::from_be_bytes(
                    rest.try_into()
                        .map_err(|_| bad("a stored reply of 8 bytes"))?,
                ),
            }),
            Some((0x85, rest)) => Ok(Reply::Forgotten {
                backups: u64::from_be_bytes(
                    rest.try_into()
                        .map_err(|_| bad("a forgotten reply of 8 bytes"))?,
                ),
            }),
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

/// Largest request: an offer of the largest backup manifest.
const MAX_REQUEST: usize = 1 + 2 + MAX_ID + 40 + 36 * MAX_OFFER_CHUNKS;

/// What a frame's buffer grows by as its bytes arrive: a length that
/// claims more than the peer sends costs no memory.
const READ_STEP: usize = 1 << 20;

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
    let mut buf = Vec::new();
    while buf.len() < n {
        let at = buf.len();
        let to = n.min(at + READ_STEP);
        buf.reserve_exact(to - at);
        buf.resize(to, 0);
        recv.read_exact(&mut buf[at..]).await?;
    }
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

/// Where the region keeps the backups sites send. Blocking; called on
/// blocking threads.
pub trait BackupSink: Send + Sync + 'static {
    /// The chunks of `manifest` the region does not hold, each once, in
    /// the manifest's order.
    fn missing(&self, site: &str, key: &str, manifest: &Manifest) -> Result<Vec<Hash>, String>;
    /// Keeps chunks (already checked against their names).
    fn put(&self, site: &str, chunks: &[(Hash, Vec<u8>)]) -> Result<(), String>;
    /// Keeps the backup, once every chunk of `manifest` is held.
    fn commit(&self, site: &str, key: &str, manifest: &Manifest) -> Result<(), String>;
    /// Drops every backup `site` kept under `key`; how many.
    fn forget(&self, site: &str, key: &str) -> Result<u64, String>;
}

/// Received chunks held before they are handed to the sink together.
const PUT_BATCH_BYTES: usize = 1 << 20;

/// The offer a stream is sending chunks for.
struct Offered {
    key: String,
    manifest: Arc<Manifest>,
    /// The chunks still lacking, with the length the manifest gives each.
    wanted: std::collections::HashMap<Hash, u32>,
    received: u64,
}

/// What one bulk stream moved, for the region's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Image chunk bytes sent to the site.
    pub sent: u64,
    /// Backup chunk bytes received from the site.
    pub received: u64,
}

/// The region's side of one bulk stream: answers requests until the site
/// finishes the stream. Backup chunks that arrived are kept even when the
/// stream is cut. Returns what moved, and how the stream ended.
pub async fn serve(
    site: String,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    source: Arc<dyn ChunkSource>,
    sink: Arc<dyn BackupSink>,
) -> (Served, Result<(), TransportError>) {
    send.set_priority(PRIORITY_BULK).ok();
    let mut served = Served::default();
    let mut offered: Option<Offered> = None;
    let mut pending: Vec<(Hash, Vec<u8>)> = Vec::new();
    let result = async {
        while let Some(frame) = read_frame(&mut recv, MAX_REQUEST).await? {
            let reply = match Request::decode(&frame)? {
                Request::Manifest { image } => {
                    let (src, s) = (source.clone(), site.clone());
                    blocking(move || match src.manifest(&s, &image) {
                        Ok(m) => Reply::Manifest(m),
                        Err(e) => Reply::Error(e),
                    })
                    .await?
                }
                Request::Chunks { image, hashes } => {
                    // One reply at a time, read and written before the
                    // next: what is held is one chunk, whatever is asked.
                    for h in hashes {
                        let (src, s, img) = (source.clone(), site.clone(), image.clone());
                        let reply = blocking(move || match src.chunk(&s, &img, &h) {
                            Ok(data) => Reply::Chunk { hash: h, data },
                            Err(e) => Reply::Error(e),
                        })
                        .await?;
                        if let Reply::Chunk { data, .. } = &reply {
                            served.sent += data.len() as u64;
                        }
                        write_frame(&mut send, &reply.encode()).await?;
                        if matches!(reply, Reply::Error(_)) {
                            break;
                        }
                    }
                    continue;
                }
                Request::Offer { key, manifest } => {
                    flush(&site, &sink, &mut pending).await?;
                    offered = None;
                    let manifest = Arc::new(manifest);
                    let (k, s, m, sk) = (key.clone(), site.clone(), manifest.clone(), sink.clone());
                    match blocking(move || sk.missing(&s, &k, &m)).await? {
                        Ok(missing) => {
                            let lens: std::collections::HashMap<Hash, u32> =
                                manifest.chunks.iter().map(|c| (c.hash, c.len)).collect();
                            offered = Some(Offered {
                                key,
                                wanted: missing
                                    .iter()
                                    .filter_map(|h| lens.get(h).map(|l| (*h, *l)))
                                    .collect(),
                                manifest,
                                received: 0,
                            });
                            Reply::Missing(missing)
                        }
                        Err(e) => Reply::Error(e),
                    }
                }
                Request::Put { hash, data } => {
                    let Some(o) = offered.as_mut() else {
                        return Err(bad("a chunk before any offer"));
                    };
                    if o.wanted.get(&hash) != Some(&(data.len() as u32)) {
                        return Err(bad("a chunk the offer did not lack, or not of its length"));
                    }
                    if <[u8; 32]>::from(Sha256::digest(&data)) != hash {
                        return Err(bad("a chunk that does not match its name"));
                    }
                    o.wanted.remove(&hash);
                    o.received += data.len() as u64;
                    served.received += data.len() as u64;
                    pending.push((hash, data));
                    if pending.iter().map(|(_, d)| d.len()).sum::<usize>() >= PUT_BATCH_BYTES {
                        flush(&site, &sink, &mut pending).await?;
                    }
                    continue;
                }
                Request::Forget { key } => {
                    flush(&site, &sink, &mut pending).await?;
                    offered = None;
                    let (s, sk) = (site.clone(), sink.clone());
                    match blocking(move || sk.forget(&s, &key)).await? {
                        Ok(backups) => Reply::Forgotten { backups },
                        Err(e) => Reply::Error(e),
                    }
                }
                Request::Commit { key } => {
                    flush(&site, &sink, &mut pending).await?;
                    match offered.take().filter(|o| o.key == key) {
                        None => {
                            Reply::Error(format!("backup {key} was not offered on this stream"))
                        }
                        Some(o) => {
                            let (s, sk, m) = (site.clone(), sink.clone(), o.manifest);
                            match blocking(move || sk.commit(&s, &key, &m)).await? {
                                Ok(()) => Reply::Stored { bytes: o.received },
                                Err(e) => Reply::Error(e),
                            }
                        }
                    }
                }
            };
            write_frame(&mut send, &reply.encode()).await?;
        }
        Ok(())
    }
    .await;
    // What arrived whole is kept, cut or not: the next offer resumes.
    let kept = flush(&site, &sink, &mut pending).await;
    if let Err(e) = &result {
        // Said before the stream ends, so the site can log why (on a cut
        // link this goes nowhere).
        let _ = write_frame(&mut send, &Reply::Error(e.to_string()).encode()).await;
    }
    send.finish().ok();
    (served, result.and(kept))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TransportError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| bad(e.to_string()))
}

async fn flush(
    site: &str,
    sink: &Arc<dyn BackupSink>,
    pending: &mut Vec<(Hash, Vec<u8>)>,
) -> Result<(), TransportError> {
    if pending.is_empty() {
        return Ok(());
    }
    let (s, sk, batch) = (site.to_string(), sink.clone(), std::mem::take(pending));
    blocking(move || sk.put(&s, &batch))
        .await?
        .map_err(|e| bad(format!("cannot keep backup chunks: {e}")))
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
    /// Chunk bytes sent on this stream.
    pub sent: u64,
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
            sent: 0,
        })
    }

    /// What a reply is, for a refusal's words.
    fn kind(r: &Reply) -> &'static str {
        match r {
            Reply::Manifest(_) => "a manifest",
            Reply::Chunk { .. } => "a chunk",
            Reply::Missing(_) => "a missing-chunks list",
            Reply::Stored { .. } => "a stored reply",
            Reply::Forgotten { .. } => "a forgotten reply",
            Reply::Error(_) => "an error",
        }
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
            r => Err(FetchError::Unexpected(format!(
                "{} where a manifest was due",
                Self::kind(&r)
            ))),
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
                r => {
                    return Err(FetchError::Unexpected(format!(
                        "{} where a chunk was due",
                        Self::kind(&r)
                    )))
                }
            }
        }
        Ok(())
    }

    /// Offers a backup of `key`; the chunks the region lacks.
    pub async fn offer(&mut self, key: &str, manifest: &Manifest) -> Result<Vec<Hash>, FetchError> {
        let req = Request::Offer {
            key: key.into(),
            manifest: manifest.clone(),
        };
        write_frame(&mut self.send, &req.encode()).await?;
        match self.reply().await? {
            Reply::Missing(m) => Ok(m),
            r => Err(FetchError::Unexpected(format!(
                "{} where the missing chunks were due",
                Self::kind(&r)
            ))),
        }
    }

    /// Sends one chunk of the offer (no reply: they stream).
    pub async fn put(&mut self, hash: Hash, data: Vec<u8>) -> Result<(), FetchError> {
        let n = data.len() as u64;
        write_frame(&mut self.send, &Request::Put { hash, data }.encode()).await?;
        self.sent += n;
        Ok(())
    }

    /// Asks the region to keep the offered backup; the chunk bytes it
    /// received for it.
    pub async fn commit(&mut self, key: &str) -> Result<u64, FetchError> {
        let req = Request::Commit { key: key.into() };
        write_frame(&mut self.send, &req.encode()).await?;
        match self.reply().await? {
            Reply::Stored { bytes } => Ok(bytes),
            r => Err(FetchError::Unexpected(format!(
                "{} where the commit's answer was due",
                Self::kind(&r)
            ))),
        }
    }

    /// Tells the region the site no longer needs what it kept under
    /// `key`; how many backups went.
    pub async fn forget(&mut self, key: &str) -> Result<u64, FetchError> {
        let req = Request::Forget { key: key.into() };
        write_frame(&mut self.send, &req.encode()).await?;
        match self.reply().await? {
            Reply::Forgotten { backups } => Ok(backups),
            r => Err(FetchError::Unexpected(format!(
                "{} where the forget's answer was due",
                Self::kind(&r)
            ))),
        }
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
            Request::Offer {
                key: "vol-1".into(),
                manifest: m.clone(),
            },
            Request::Put {
                hash: [4; 32],
                data: vec![5; 300],
            },
            Request::Commit {
                key: "vol-1".into(),
            },
            Request::Forget {
                key: "snap-1".into(),
            },
        ] {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        for r in [
            Reply::Manifest(m.clone()),
            Reply::Chunk {
                hash: [3; 32],
                data: vec![9; 100],
            },
            Reply::Missing(vec![[6; 32], [7; 32]]),
            Reply::Missing(vec![]),
            Reply::Stored { bytes: 1 << 40 },
            Reply::Forgotten { backups: 2 },
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
        let offer = Request::Offer {
            key: "vol-1".into(),
            manifest: m.clone(),
        }
        .encode();
        let mut big_put = vec![0x04];
        big_put.extend(vec![0u8; 32 + MAX_CHUNK + 1]);
        for (bad, says) in [
            (offer[..offer.len() - 1].to_vec(), "manifest"),
            (vec![0x03, 0, 0], "backup key"),
            (vec![0x04; 20], "chunk of 1 to 32 KiB"),
            (big_put, "chunk of 1 to 32 KiB"),
            (vec![0x05], "backup key"),
        ] {
            let e = Request::decode(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let mut big = vec![0x82];
        big.extend(vec![0u8; 32 + MAX_CHUNK + 1]);
        let mut lying = vec![0x83];
        lying.extend_from_slice(&3u32.to_be_bytes());
        lying.extend_from_slice(&[0; 64]);
        for bad in [vec![0x82; 10], big, vec![0x80], lying, vec![0x84, 0, 0, 0]] {
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

    /// A backup sink in memory, counting what it was handed.
    #[derive(Default)]
    struct Memory {
        chunks: std::sync::Mutex<std::collections::HashMap<Hash, Vec<u8>>>,
        kept: std::sync::Mutex<Vec<(String, Manifest)>>,
    }

    impl BackupSink for Memory {
        fn missing(&self, _: &str, _: &str, m: &Manifest) -> Result<Vec<Hash>, String> {
            let held = self.chunks.lock().unwrap();
            let mut seen = std::collections::HashSet::new();
            Ok(m.chunks
                .iter()
                .map(|c| c.hash)
                .filter(|h| !held.contains_key(h) && seen.insert(*h))
                .collect())
        }
        fn put(&self, _: &str, chunks: &[(Hash, Vec<u8>)]) -> Result<(), String> {
            self.chunks.lock().unwrap().extend(chunks.iter().cloned());
            Ok(())
        }
        fn commit(&self, _: &str, key: &str, m: &Manifest) -> Result<(), String> {
            let held = self.chunks.lock().unwrap();
            if m.chunks.iter().any(|c| !held.contains_key(&c.hash)) {
                return Err("lacks chunks".into());
            }
            self.kept.lock().unwrap().push((key.into(), m.clone()));
            Ok(())
        }
        fn forget(&self, _: &str, key: &str) -> Result<u64, String> {
            let mut kept = self.kept.lock().unwrap();
            let before = kept.len();
            kept.retain(|(k, _)| k != key);
            Ok((before - kept.len()) as u64)
        }
    }

    struct NoImages;

    impl ChunkSource for NoImages {
        fn manifest(&self, _: &str, image: &str) -> Result<Manifest, String> {
            Err(format!("no image {image}"))
        }
        fn chunk(&self, _: &str, image: &str, _: &Hash) -> Result<Vec<u8>, String> {
            Err(format!("no image {image}"))
        }
    }

    /// A region endpoint serving every bulk stream into `sink`, and a
    /// site's endpoint that connects to it, over real QUIC with mutual TLS.
    async fn link(sink: Arc<Memory>) -> (quinn::Endpoint, quinn::Endpoint, std::net::SocketAddr) {
        let ca = crate::pki::Ca::new("eu").unwrap();
        let server = quinn::Endpoint::server(
            crate::transport::server_config(&ca.issue_region("eu").unwrap()).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let accepting = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let Ok(conn) = incoming.await else { continue };
                let sink = sink.clone();
                tokio::spawn(async move {
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        let sink: Arc<dyn BackupSink> = sink.clone();
                        tokio::spawn(serve("f1".into(), send, recv, Arc::new(NoImages), sink));
                    }
                });
            }
        });
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(
            crate::transport::client_config(&ca.issue_site("f1").unwrap()).unwrap(),
        );
        (server, client, addr)
    }

    async fn connect(client: &quinn::Endpoint, addr: std::net::SocketAddr) -> quinn::Connection {
        client
            .connect(addr, &crate::pki::region_server_name("eu"))
            .unwrap()
            .await
            .unwrap()
    }

    fn chunk_of(data: &[u8], m: &Manifest, h: &Hash) -> Vec<u8> {
        let (at, c) = m.offsets().find(|(_, c)| c.hash == *h).unwrap();
        data[at as usize..at as usize + c.len as usize].to_vec()
    }

    #[tokio::test]
    async fn a_backup_cut_part_way_keeps_what_arrived_and_the_next_offer_lacks_only_the_rest() {
        use rand::{RngCore, SeedableRng};
        let mut data = vec![0u8; 1 << 20];
        rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut data);
        let m = Manifest::of_reader(&data[..]).unwrap();
        let sink = Arc::new(Memory::default());
        let (_server, client, addr) = link(sink.clone()).await;
        let conn = connect(&client, addr).await;

        // Half the chunks, then the stream is reset: the region keeps them.
        let mut c = BulkClient::open(&conn).await.unwrap();
        let missing = c.offer("vol-1", &m).await.unwrap();
        assert_eq!(missing.len(), m.chunks.len());
        let half = missing.len() / 2;
        for h in &missing[..half] {
            c.put(*h, chunk_of(&data, &m, h)).await.unwrap();
        }
        // Less than a batch, so held until the stream ends, commit or
        // not (a cut ends it the same way, by an error: tests/tests/
        // volume_backup.rs cuts a real link).
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(sink.chunks.lock().unwrap().is_empty());
        c.finish();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sink.chunks.lock().unwrap().len() < half && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(sink.chunks.lock().unwrap().len(), half);
        assert!(sink.kept.lock().unwrap().is_empty());
        // A new connection, as after a cut.
        conn.close(0u32.into(), b"cut");
        let conn = connect(&client, addr).await;

        // The next offer lacks only the rest; a commit before they are
        // sent is refused and keeps nothing.
        let mut c = BulkClient::open(&conn).await.unwrap();
        let rest = c.offer("vol-1", &m).await.unwrap();
        assert_eq!(rest, missing[half..].to_vec());
        let e = c.commit("vol-1").await.unwrap_err();
        assert!(e.to_string().contains("lacks chunks"), "{e}");
        assert!(sink.kept.lock().unwrap().is_empty());
        let mut c = BulkClient::open(&conn).await.unwrap();
        assert_eq!(c.offer("vol-1", &m).await.unwrap(), rest);
        for h in &rest {
            c.put(*h, chunk_of(&data, &m, h)).await.unwrap();
        }
        let stored = c.commit("vol-1").await.unwrap();
        assert_eq!(
            stored,
            rest.iter()
                .map(|h| chunk_of(&data, &m, h).len() as u64)
                .sum::<u64>()
        );
        assert_eq!(
            sink.kept.lock().unwrap()[0],
            ("vol-1".to_string(), m.clone())
        );

        // A commit of a key not offered on the stream is refused by name.
        let e = c.commit("vol-2").await.unwrap_err();
        assert!(
            e.to_string().contains("backup vol-2 was not offered"),
            "{e}"
        );

        // A chunk the offer did not lack ends the stream.
        let mut c = BulkClient::open(&conn).await.unwrap();
        assert!(c.offer("vol-1", &m).await.unwrap().is_empty());
        let h = m.chunks[0].hash;
        c.put(h, chunk_of(&data, &m, &h)).await.unwrap();
        let e = c.commit("vol-1").await.unwrap_err().to_string();
        assert!(e.contains("a chunk the offer did not lack"), "{e}");
        // A chunk of the wrong length, or not matching its name, too.
        let mut other = data.clone();
        other[0] ^= 1;
        let m2 = Manifest::of_reader(&other[..]).unwrap();
        let mut c = BulkClient::open(&conn).await.unwrap();
        let want = c.offer("vol-3", &m2).await.unwrap();
        assert_eq!(want.len(), 1, "one chunk changed");
        c.put(want[0], vec![0u8; 100]).await.unwrap();
        let e = c.commit("vol-3").await.unwrap_err().to_string();
        assert!(e.contains("not of its length"), "{e}");
        let mut c = BulkClient::open(&conn).await.unwrap();
        let want = c.offer("vol-3", &m2).await.unwrap();
        let mut forged = chunk_of(&other, &m2, &want[0]);
        forged[1] ^= 1;
        c.put(want[0], forged).await.unwrap();
        let e = c.commit("vol-3").await.unwrap_err().to_string();
        assert!(e.contains("does not match its name"), "{e}");
        assert_eq!(sink.kept.lock().unwrap().len(), 1, "nothing else kept");

        // The site no longer needs it: gone, once.
        let mut c = BulkClient::open(&conn).await.unwrap();
        assert_eq!(c.forget("vol-1").await.unwrap(), 1);
        assert!(sink.kept.lock().unwrap().is_empty());
        assert_eq!(c.forget("vol-1").await.unwrap(), 0);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = Request::decode(&bytes);
            let _ = Reply::decode(&bytes);
        }
    }
}
