//! Properties of the rules that parse client input, over generated input (a seeded
//! generator: every run checks the same cases): parsing never panics, errors name their
//! field and stay short enough to arrive, valid values round trip, and a manifest's
//! canonical encoding and digest do not depend on entry order.

use stagecache_proto::path::validate_path;
use stagecache_proto::quote::MAX_STATUS_MESSAGE_BYTES;
use stagecache_proto::v1;
use stagecache_proto::{Digest, Manifest, ManifestEntry, Namespace, RefName};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Short strings from a hostile alphabet, sometimes repeated to 20,000+ bytes.
    fn text(&mut self) -> String {
        const ALPHABET: [&str; 16] = [
            "a", "Z", "0", "/", ".", "..", "-", "_", "\0", "\\", " ", "ä", "\n", "f", "@", "ü",
        ];
        let len = self.below(40);
        let s: String = (0..len).map(|_| ALPHABET[self.below(16)]).collect();
        if self.below(8) == 0 && !s.is_empty() {
            s.repeat(20_000 / s.len() + 1)
        } else {
            s
        }
    }
}

fn short_error(e: impl std::fmt::Display, field: &str) {
    let m = e.to_string();
    assert!(m.len() < MAX_STATUS_MESSAGE_BYTES, "{} bytes", m.len());
    assert!(m.starts_with(field), "{m:?} does not start with {field:?}");
}

#[test]
fn parsing_never_panics_errors_are_short_valid_values_round_trip() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let value = rng.text();
        let size = rng.next();
        let wire = v1::Digest {
            hash: value.clone(),
            size_bytes: size,
        };
        match Digest::from_proto("digest", &wire) {
            Ok(d) => assert_eq!((d.hash_hex(), d.size()), (value.clone(), size)),
            Err(e) => short_error(e, "digest.hash"),
        }
        match Namespace::parse("namespace", &value) {
            Ok(n) => assert_eq!(n.as_str(), value),
            Err(e) => short_error(e, "namespace: "),
        }
        match RefName::parse("name", &value) {
            Ok(n) => assert_eq!(n.as_str(), value),
            Err(e) => short_error(e, "name: "),
        }
        if let Err(e) = validate_path("entries[0].path", &value) {
            short_error(e, "entries[0].path: ");
        }
        let mut hash = [0u8; 32];
        hash.iter_mut().for_each(|b| *b = rng.next() as u8);
        let d = Digest::new(hash, size);
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        let _ = Manifest::from_canonical_bytes(value.as_bytes());
    }
}

#[test]
fn manifests_encode_canonically_in_any_order() {
    let mut rng = Rng(42);
    for _ in 0..2_000 {
        let n = rng.below(30);
        let mut entries: Vec<ManifestEntry> = Vec::new();
        for _ in 0..n {
            let segments = 1 + rng.below(3);
            let path: Vec<String> = (0..segments)
                .map(|_| ["a", "b", "c", "ab"][rng.below(4)].to_string())
                .collect();
            let path = path.join("/");
            if entries.iter().any(|e| e.path == path) {
                continue;
            }
            let mut hash = [0u8; 32];
            hash.iter_mut().for_each(|b| *b = rng.next() as u8);
            entries.push(ManifestEntry {
                path,
                digest: Digest::new(hash, rng.next() >> 24),
                executable: rng.below(2) == 0,
            });
        }
        let Ok(m) = Manifest::from_entries(entries.clone()) else {
            continue; // a file inside another file's path
        };
        for i in (1..entries.len()).rev() {
            entries.swap(i, rng.below(i + 1));
        }
        let again = Manifest::from_entries(entries).unwrap();
        assert_eq!(again, m);
        let bytes = m.canonical_bytes();
        assert_eq!(Manifest::from_canonical_bytes(&bytes).unwrap(), m);
        assert_eq!(Digest::of_bytes(&bytes), m.digest());
        assert_eq!(again.digest(), m.digest());
    }
}
