//! Content-defined chunking and chunk manifests: what lets a site fetch
//! only the parts of an image it does not hold.
//!
//! A file is cut where a rolling gear hash of the last bytes matches a
//! mask (FastCDC's normalised chunking: a stricter mask before the average
//! size, a looser one after), so an edit moves the cut points near it and
//! no others: two versions of an image share every chunk away from the
//! changes. Chunks are 2-32 KiB, about 9 KiB on average, and named by their
//! sha256. A [`Manifest`] lists a file's chunks in order; with it, a site
//! asks its region only for the chunks whose names it has nowhere on disk.

use std::io::Read;

use sha2::{Digest, Sha256};

pub const MIN_CHUNK: usize = 2 << 10;
pub const AVG_CHUNK: usize = 8 << 10;
pub const MAX_CHUNK: usize = 32 << 10;

/// Before the average size a cut needs the hash's top 15 bits zero, after
/// it the top 11 (log2 of the average, 13, two up and two down: FastCDC's
/// normalisation, which narrows the spread of sizes). The top bits of a
/// gear hash depend on the last 64 bytes only.
const MASK_STRICT: u64 = 0xfffe_0000_0000_0000;
const MASK_LOOSE: u64 = 0xffe0_0000_0000_0000;

/// A chunk's name: the sha256 of its bytes.
pub type Hash = [u8; 32];

/// 256 pseudo-random words (splitmix64 from a fixed seed), one per byte
/// value: the rolling hash adds the word of each byte it shifts in.
const GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut x: u64 = 0x5254_4f4f_5354_4744; // "RTOOSTGD"
    let mut i = 0;
    while i < 256 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
};

/// The length of the first chunk of `data` (all of it when it is shorter
/// than [`MIN_CHUNK`]; never more than [`MAX_CHUNK`]).
pub fn cut(data: &[u8]) -> usize {
    let n = data.len().min(MAX_CHUNK);
    if n <= MIN_CHUNK {
        return n;
    }
    let mut h: u64 = 0;
    let normal = AVG_CHUNK.min(n);
    for (i, &b) in data.iter().enumerate().take(normal).skip(MIN_CHUNK) {
        h = (h << 1).wrapping_add(GEAR[b as usize]);
        if h & MASK_STRICT == 0 {
            return i + 1;
        }
    }
    for (i, &b) in data.iter().enumerate().take(n).skip(normal) {
        h = (h << 1).wrapping_add(GEAR[b as usize]);
        if h & MASK_LOOSE == 0 {
            return i + 1;
        }
    }
    n
}

/// One chunk of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub hash: Hash,
    pub len: u32,
}

/// Why a manifest's bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest: {0}")]
    Malformed(String),
}

/// A file's chunks in order, and the sha256 of the whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub sha256: Hash,
    pub chunks: Vec<ChunkRef>,
}

const MAGIC: &[u8; 4] = b"RMF1";
/// Most chunks a manifest may list: 64 GiB of average chunks.
pub const MAX_CHUNKS: usize = 8 << 20;

impl Manifest {
    /// Chunks `r` to its end; also hashes the whole.
    pub fn of_reader(mut r: impl Read) -> std::io::Result<Manifest> {
        let mut whole = Sha256::new();
        let mut chunks = Vec::new();
        let mut buf = vec![0u8; 4 * MAX_CHUNK];
        let mut filled = 0;
        let mut eof = false;
        loop {
            while !eof && filled < buf.len() {
                match r.read(&mut buf[filled..]) {
                    Ok(0) => eof = true,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if filled == 0 {
                break;
            }
            let mut at = 0;
            // Cut while a whole maximum chunk is in the buffer (or at the end).
            while at < filled && (eof || filled - at >= MAX_CHUNK) {
                let len = cut(&buf[at..filled]);
                let piece = &buf[at..at + len];
                whole.update(piece);
                chunks.push(ChunkRef {
                    hash: Sha256::digest(piece).into(),
                    len: len as u32,
                });
                at += len;
            }
            buf.copy_within(at..filled, 0);
            filled -= at;
        }
        Ok(Manifest {
            sha256: whole.finalize().into(),
            chunks,
        })
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    /// Each chunk with its offset in the file.
    pub fn offsets(&self) -> impl Iterator<Item = (u64, &ChunkRef)> {
        self.chunks.iter().scan(0u64, |at, c| {
            let here = *at;
            *at += u64::from(c.len);
            Some((here, c))
        })
    }

    /// `RMF1`, the whole file's sha256, a u32 count, then each chunk's
    /// sha256 and u32 length (big-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.chunks.len() * 36);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.sha256);
        out.extend_from_slice(&(self.chunks.len() as u32).to_be_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.hash);
            out.extend_from_slice(&c.len.to_be_bytes());
        }
        out
    }

    /// Reads what [`Manifest::encode`] wrote, refusing anything else.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let bad = |m: &str| ManifestError::Malformed(m.to_string());
        if bytes.len() < 40 || &bytes[..4] != MAGIC {
            return Err(bad("does not start with RMF1, a sha256 and a count"));
        }
        let sha256: Hash = bytes[4..36].try_into().map_err(|_| bad("short sha256"))?;
        let count =
            u32::from_be_bytes(bytes[36..40].try_into().map_err(|_| bad("short count"))?) as usize;
        if count > MAX_CHUNKS {
            return Err(bad(&format!(
                "lists {count} chunks, more than {MAX_CHUNKS}"
            )));
        }
        let body = &bytes[40..];
        if body.len() != count * 36 {
            return Err(bad(&format!(
                "says {count} chunks but holds {} bytes of them",
                body.len()
            )));
        }
        let mut chunks = Vec::with_capacity(count);
        for c in body.chunks_exact(36) {
            let len = u32::from_be_bytes(c[32..36].try_into().map_err(|_| bad("short length"))?);
            if len == 0 || len as usize > MAX_CHUNK {
                return Err(bad(&format!("a chunk of {len} bytes (1 to {MAX_CHUNK})")));
            }
            chunks.push(ChunkRef {
                hash: c[..32].try_into().map_err(|_| bad("short hash"))?,
                len,
            });
        }
        Ok(Manifest { sha256, chunks })
    }
}

/// Lower-case hex of a hash, for logs and file names.
pub fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    #[test]
    fn chunks_cover_the_file_within_their_bounds_and_average_near_8k() {
        let data = random(8 << 20, 1);
        let m = Manifest::of_reader(&data[..]).unwrap();
        assert_eq!(m.size(), data.len() as u64);
        assert_eq!(m.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
        let last = m.chunks.len() - 1;
        for (i, (at, c)) in m.offsets().enumerate() {
            let len = c.len as usize;
            assert!(len <= MAX_CHUNK && (len >= MIN_CHUNK || i == last), "{len}");
            let piece = &data[at as usize..at as usize + len];
            assert_eq!(c.hash, <[u8; 32]>::from(Sha256::digest(piece)));
        }
        let avg = data.len() / m.chunks.len();
        assert!((6 << 10..=12 << 10).contains(&avg), "average chunk {avg}");
        // The reader's buffering does not move cuts: one byte at a time
        // gives the same manifest.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(7);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        assert_eq!(
            Manifest::of_reader(Trickle(&data[..1 << 20])).unwrap(),
            Manifest::of_reader(&data[..1 << 20]).unwrap()
        );
        // Zeros (sparse images) cut at the maximum.
        let zeros = Manifest::of_reader(&vec![0u8; 1 << 20][..]).unwrap();
        assert!(zeros.chunks.iter().all(|c| c.len as usize == MAX_CHUNK));
    }

    #[test]
    fn an_edit_changes_only_the_chunks_near_it() {
        let v1 = random(16 << 20, 2);
        let mut v2 = v1.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // 5% of the bytes, in 64 KiB runs, some overwritten, some inserted.
        let mut changed = 0;
        while changed < v1.len() / 20 {
            let at = rng.random_range(0..v2.len() - (64 << 10));
            let run = random(64 << 10, rng.random());
            if rng.random_bool(0.5) {
                v2[at..at + run.len()].copy_from_slice(&run);
            } else {
                v2.splice(at..at, run.iter().copied());
            }
            changed += run.len();
        }
        let (m1, m2) = (
            Manifest::of_reader(&v1[..]).unwrap(),
            Manifest::of_reader(&v2[..]).unwrap(),
        );
        let have: std::collections::HashSet<Hash> = m1.chunks.iter().map(|c| c.hash).collect();
        let new: u64 = m2
            .chunks
            .iter()
            .filter(|c| !have.contains(&c.hash))
            .map(|c| u64::from(c.len))
            .sum();
        let share = new as f64 / m2.size() as f64;
        assert!(share < 0.075, "{:.1}% of v2 is new chunks", share * 100.0);
    }

    #[test]
    fn manifests_round_trip_and_bad_bytes_are_refused() {
        let m = Manifest::of_reader(&random(300 << 10, 4)[..]).unwrap();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        let e = m.encode();
        for bad in [
            &e[..10],
            &e[..e.len() - 1],
            b"RMF2xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".as_slice(),
        ] {
            assert!(Manifest::decode(bad).is_err());
        }
        let mut huge = e.clone();
        huge[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Manifest::decode(&huge).is_err());
        let mut zero = e.clone();
        zero[40 + 32..40 + 36].copy_from_slice(&0u32.to_be_bytes());
        assert!(Manifest::decode(&zero).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Manifest::decode(&bytes);
        }
    }
}
