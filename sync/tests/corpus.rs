//! Every decoder that reads bytes from another machine, fed a corpus kept
//! in the repository (`sync/fuzz/corpus/<decoder>/`) and thousands of
//! mutations of it: each input is decoded or refused with an error, never
//! a panic, and a refused sync message leaves the documents as they were.
//! Seeds named `valid-*` must decode, so the corpus stays meaningful as the
//! formats change.
//!
//! The seeds come from the real encoders; after a format change, write them
//! again with `ROOST_WRITE_CORPUS=1 cargo test -p roost-sync --test corpus`
//! and keep any crash inputs found since (as `crash-*` files) beside them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use roost_sync::bulk::{Reply, Request};
use roost_sync::chunks::Manifest;
use roost_sync::frame::{self, DocId};
use roost_sync::session::SessionConfig;
use roost_sync::token::{self, Signer, TokenClaims, Trust};
use roost_sync::{site_status_actor, Docs, IntentDoc, Role, Session, StatusDoc};

/// Mutations tried per seed.
const MUTATIONS: usize = 3_000;

fn corpus(decoder: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(decoder)
}

fn docs(role: Role) -> Docs {
    let (actor, author) = match role {
        Role::Site => (b"corpus-site-0001", "site:f1"),
        Role::Region => (b"corpus-region-01", "region:eu"),
    };
    Docs {
        intent: IntentDoc::new(actor, author),
        status: StatusDoc::new(&site_status_actor("f1")),
        site_status_actor: site_status_actor("f1"),
    }
}

/// The seeds, from the real encoders.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let now = Instant::now();
    // A site with a server, the sync frames its first session sends.
    let mut site = docs(Role::Site);
    site.intent
        .create(
            "servers",
            "s1",
            serde_json::json!({"name": "plc-1", "power": "running"})
                .as_object()
                .unwrap()
                .clone(),
            1,
        )
        .unwrap();
    site.status
        .set("servers", "s1", &serde_json::json!({"vm_state": "active"}))
        .unwrap();
    // Its session with a region, to the end: every frame the site sends
    // (the first carry heads, the later ones the changes).
    let mut region = docs(Role::Region);
    let cfg = SessionConfig::default();
    let mut site_session = Session::new(Role::Site, cfg.clone(), None, now).unwrap();
    let mut region_session = Session::new(Role::Region, cfg, None, now).unwrap();
    let mut out = Vec::new();
    for round in 0..4 {
        site_session.handle_timeout(&mut site, now);
        let mut n = 0;
        while let Some(f) = site_session.poll_message() {
            region_session.handle_message(&mut region, &f, now).unwrap();
            out.push(("session", format!("valid-site-{round}-{n}"), f));
            n += 1;
        }
        region_session.handle_timeout(&mut region, now);
        while let Some(f) = region_session.poll_message() {
            site_session.handle_message(&mut site, &f, now).unwrap();
        }
    }
    assert!(region.intent.resource("servers", "s1").unwrap().is_some());
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let manifest = Manifest::of_reader(&data[..]).unwrap();
    let hashes = manifest.chunks.iter().map(|c| c.hash).take(3).collect();
    let signer = signer();
    let claims = TokenClaims {
        user_id: "u".into(),
        user_name: "admin".into(),
        project_id: "p".into(),
        project_name: "admin".into(),
        roles: vec!["admin".into()],
        issued_at: 0,
        expires_at: i64::MAX,
        audit_id: "a".into(),
        region: "eu".into(),
    };
    out.extend([
        (
            "frame",
            "valid-sync".into(),
            frame::encode_sync(DocId::Intent, b"\x00message"),
        ),
        (
            "frame",
            "valid-fragment".into(),
            frame::encode_fragment(DocId::Status, 7, 1, 3, b"part"),
        ),
        ("manifest", "valid-manifest".into(), manifest.encode()),
        (
            "bulk_request",
            "valid-manifest".into(),
            Request::Manifest {
                image: "img-1".into(),
            }
            .encode(),
        ),
        (
            "bulk_request",
            "valid-chunks".into(),
            Request::Chunks {
                image: "img-1".into(),
                hashes,
            }
            .encode(),
        ),
        (
            "bulk_reply",
            "valid-chunk".into(),
            Reply::Chunk {
                hash: manifest.chunks[0].hash,
                data: data[..manifest.chunks[0].len as usize].to_vec(),
            }
            .encode(),
        ),
        (
            "bulk_reply",
            "valid-error".into(),
            Reply::Error("no".into()).encode(),
        ),
        (
            "bulk_request",
            "valid-offer".into(),
            Request::Offer {
                key: "vol-1".into(),
                manifest: manifest.clone(),
            }
            .encode(),
        ),
        (
            "bulk_request",
            "valid-put".into(),
            Request::Put {
                hash: manifest.chunks[0].hash,
                data: data[..manifest.chunks[0].len as usize].to_vec(),
            }
            .encode(),
        ),
        (
            "bulk_request",
            "valid-commit".into(),
            Request::Commit {
                key: "vol-1".into(),
            }
            .encode(),
        ),
        (
            "bulk_reply",
            "valid-missing".into(),
            Reply::Missing(manifest.chunks.iter().map(|c| c.hash).take(3).collect()).encode(),
        ),
        (
            "bulk_reply",
            "valid-stored".into(),
            Reply::Stored { bytes: 12345 }.encode(),
        ),
        (
            "bulk_request",
            "valid-forget".into(),
            Request::Forget {
                key: "snap-1".into(),
            }
            .encode(),
        ),
        (
            "bulk_reply",
            "valid-forgotten".into(),
            Reply::Forgotten { backups: 1 }.encode(),
        ),
        (
            "token",
            "valid-signed".into(),
            signer.sign(&claims).into_bytes(),
        ),
    ]);
    out
}

/// The key the token seeds are signed with, kept beside the corpus so the
/// mutations reach the claims (a token of another key is refused first).
fn signer() -> Signer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/token-key.pk8");
    match std::fs::read(&path) {
        Ok(key) => Signer::from_pkcs8(&key).unwrap(),
        Err(_) => {
            let s = Signer::generate().unwrap();
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, s.pkcs8()).unwrap();
            s
        }
    }
}

fn trust() -> &'static Trust {
    static TRUST: std::sync::OnceLock<Trust> = std::sync::OnceLock::new();
    TRUST.get_or_init(|| Trust {
        keys: vec![signer().public_key()],
        revoked: Default::default(),
    })
}

/// Decodes `input` as `decoder` reads it; whether it was taken.
fn decode(decoder: &str, input: &[u8]) -> bool {
    match decoder {
        "frame" => frame::decode(input, 1 << 20).is_ok(),
        "manifest" => Manifest::decode(input).is_ok(),
        "bulk_request" => Request::decode(input).is_ok(),
        "bulk_reply" => Reply::decode(input).is_ok(),
        "token" => {
            let text = String::from_utf8_lossy(input);
            token::verify(trust(), &text, 1).is_ok()
        }
        "session" => {
            // A fresh region takes the frame or refuses it; refused, its
            // documents are as they were.
            let now = Instant::now();
            let mut region = docs(Role::Region);
            let before = (region.intent.heads(), region.status.heads());
            let mut s = Session::new(Role::Region, SessionConfig::default(), None, now).unwrap();
            let taken = s.handle_message(&mut region, input, now).is_ok();
            if !taken {
                assert_eq!(
                    (region.intent.heads(), region.status.heads()),
                    before,
                    "a refused frame changed the documents"
                );
            }
            taken
        }
        other => panic!("no decoder {other}"),
    }
}

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..4) {
        match rng.random_range(0..5) {
            0 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            2 => b.truncate(rng.random_range(0..=b.len())),
            3 => {
                let i = rng.random_range(0..=b.len());
                let n = rng.random_range(1..64);
                let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                b.splice(i..i, junk);
            }
            _ if b.len() >= 4 => {
                // A length or count field made huge.
                let i = rng.random_range(0..b.len() - 3);
                b[i..i + 4].copy_from_slice(&u32::MAX.to_be_bytes());
            }
            _ => b.push(rng.random()),
        }
    }
    b
}

#[test]
fn every_decoder_takes_or_refuses_the_corpus_and_its_mutations() {
    if std::env::var_os("ROOST_WRITE_CORPUS").is_some() {
        for (decoder, name, bytes) in seeds() {
            let dir = corpus(decoder);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
        }
    }
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut tried = 0;
    for decoder in [
        "frame",
        "session",
        "manifest",
        "bulk_request",
        "bulk_reply",
        "token",
    ] {
        let dir = corpus(decoder);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus for {decoder}");
        for file in files {
            let seed = std::fs::read(&file).unwrap();
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let taken = decode(decoder, &seed);
            if name.starts_with("valid-") {
                assert!(taken, "{decoder}/{name} no longer decodes");
            }
            for _ in 0..MUTATIONS {
                decode(decoder, &mutate(&mut rng, &seed));
                tried += 1;
            }
        }
    }
    assert!(tried >= 10 * MUTATIONS);
}
