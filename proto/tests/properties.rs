//! Properties of the rules that parse client input, over generated input: parsing never
//! panics, errors name their field and stay short enough to arrive, valid values round
//! trip, and a manifest's canonical encoding and digest do not depend on entry order.

use proptest::prelude::*;
use stagecache_proto::path::validate_path;
use stagecache_proto::quote::MAX_STATUS_MESSAGE_BYTES;
use stagecache_proto::v1;
use stagecache_proto::{Digest, Manifest, ManifestEntry, Namespace, RefName};

/// Any string, long ones included (up to 20,000 characters).
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9./_-]{0,80}",
        ("[a-zA-Z0-9/._-]{1,20}", 0usize..20_000).prop_map(|(s, n)| s.repeat(n / s.len() + 1)),
    ]
}

fn short_error(e: impl std::fmt::Display, field: &str) -> Result<(), TestCaseError> {
    let m = e.to_string();
    prop_assert!(m.len() < MAX_STATUS_MESSAGE_BYTES, "{} bytes", m.len());
    prop_assert!(m.starts_with(field), "{m:?} does not start with {field:?}");
    Ok(())
}

proptest! {
    #[test]
    fn digests_parse_without_panic_and_round_trip(hash in any_text(), size: u64, raw: [u8; 32]) {
        match Digest::from_proto("digest", &v1::Digest { hash: hash.clone(), size_bytes: size }) {
            Ok(d) => {
                prop_assert_eq!(d.hash_hex(), hash);
                prop_assert_eq!(d.size(), size);
            }
            Err(e) => short_error(e, "digest.hash")?,
        }
        let d = Digest::new(raw, size);
        prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        prop_assert_eq!(Digest::from_proto("d", &d.to_proto()).unwrap(), d);
    }

    #[test]
    fn names_parse_without_panic(value in any_text()) {
        match Namespace::parse("namespace", &value) {
            Ok(n) => prop_assert_eq!(n.as_str(), value.as_str()),
            Err(e) => short_error(e, "namespace: ")?,
        }
        match RefName::parse("name", &value) {
            Ok(n) => prop_assert_eq!(n.as_str(), value.as_str()),
            Err(e) => short_error(e, "name: ")?,
        }
        if let Err(e) = validate_path("entries[0].path", &value) {
            short_error(e, "entries[0].path: ")?;
        }
    }

    #[test]
    fn manifests_encode_canonically_in_any_order(
        files in prop::collection::btree_map("[a-c]{1,3}(/[a-c]{1,3}){0,2}", (any::<[u8; 32]>(), 0u64..1 << 40, any::<bool>()), 0..40),
        seed: u64,
    ) {
        let entries: Vec<ManifestEntry> = files
            .into_iter()
            .map(|(path, (hash, size, executable))| ManifestEntry { path, digest: Digest::new(hash, size), executable })
            .collect();
        let Ok(m) = Manifest::from_entries(entries.clone()) else {
            // Only a file inside another file's path is refused here.
            return Ok(());
        };
        // Any order of the same entries gives the same manifest and digest.
        let mut shuffled = entries;
        let n = shuffled.len();
        for i in 0..n {
            let j = ((seed.wrapping_mul(i as u64 + 1)) % n as u64) as usize;
            shuffled.swap(i, j);
        }
        let again = Manifest::from_entries(shuffled).unwrap();
        prop_assert_eq!(&again, &m);
        let bytes = m.canonical_bytes();
        prop_assert_eq!(Manifest::from_canonical_bytes(&bytes).unwrap(), m.clone());
        prop_assert_eq!(again.digest(), m.digest());
        prop_assert_eq!(Digest::of_bytes(&bytes), m.digest());
    }

    #[test]
    fn canonical_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Manifest::from_canonical_bytes(&bytes);
    }
}
