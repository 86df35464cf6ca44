//! BLAKE3 digests: 32 bytes of hash (64 lower-case hex characters on the wire) and a size.

use crate::error::RuleError;
use crate::v1;
use std::fmt;
use std::str::FromStr;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex digit values; 0xFF for every other byte (upper case included).
const UNHEX: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 16 {
        t[HEX[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Identifies a blob: the BLAKE3 hash of its bytes and their count.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hash: [u8; 32],
    size: u64,
}

impl Digest {
    /// Digest of the empty blob.
    pub const EMPTY_HASH_HEX: &'static str =
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    pub fn new(hash: [u8; 32], size: u64) -> Self {
        Digest { hash, size }
    }

    /// Hashes `data` in memory.
    pub fn of_bytes(data: &[u8]) -> Self {
        Digest {
            hash: *blake3::hash(data).as_bytes(),
            size: data.len() as u64,
        }
    }

    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn hash_hex(&self) -> String {
        let mut out = [0u8; 64];
        for (i, b) in self.hash.iter().enumerate() {
            out[2 * i] = HEX[(b >> 4) as usize];
            out[2 * i + 1] = HEX[(b & 0xf) as usize];
        }
        // Every byte is an ASCII hex digit.
        String::from_utf8(out.to_vec()).expect("hex is ASCII")
    }

    /// Parses 64 lower-case hex characters.
    pub fn parse_hash(field: &str, hex_str: &str) -> Result<[u8; 32], RuleError> {
        Self::parse_hash_in(|| field.to_string(), hex_str)
    }

    /// [`Self::parse_hash`] with the field's name built only when there is an error: lists
    /// of 100,000 digests pay no formatting for the valid ones.
    fn parse_hash_in(field: impl FnOnce() -> String, hex_str: &str) -> Result<[u8; 32], RuleError> {
        // Table-driven: lists of 100,000 digests are parsed on every FindMissing.
        let b = hex_str.as_bytes();
        if b.len() == 64 {
            let mut out = [0u8; 32];
            let mut bad = 0u8;
            for (i, pair) in b.chunks_exact(2).enumerate() {
                let (hi, lo) = (UNHEX[pair[0] as usize], UNHEX[pair[1] as usize]);
                bad |= hi | lo;
                out[i] = (hi << 4) | (lo & 0xf);
            }
            if bad & 0x80 == 0 {
                return Ok(out);
            }
        }
        let reason = if hex_str.len() != 64 {
            format!(
                "hash {} has {} characters, expected 64 lower-case hex",
                crate::quote::quote(hex_str),
                crate::quote::thousands(hex_str.len() as u64)
            )
        } else {
            format!(
                "hash {} is not 64 lower-case hex characters",
                crate::quote::quote(hex_str)
            )
        };
        Err(RuleError::Digest {
            field: field(),
            reason,
        })
    }

    /// Validates a wire digest. `field` names it in errors (e.g. `digest`, `entries[3].digest`).
    pub fn from_proto(field: &str, d: &v1::Digest) -> Result<Self, RuleError> {
        Self::from_proto_in(|| field.to_string(), d)
    }

    /// [`Self::from_proto`] with the field's name built only on error (lists of 100,000
    /// digests pay no formatting for the valid ones; see [`Self::list_from_proto`]).
    pub fn from_proto_in(
        field: impl FnOnce() -> String,
        d: &v1::Digest,
    ) -> Result<Self, RuleError> {
        let hash = Self::parse_hash_in(|| format!("{}.hash", field()), &d.hash)?;
        Ok(Digest {
            hash,
            size: d.size_bytes,
        })
    }

    /// Validates a list of wire digests; an error names the item (`digests[17].hash`).
    pub fn list_from_proto(field: &str, items: &[v1::Digest]) -> Result<Vec<Self>, RuleError> {
        items
            .iter()
            .enumerate()
            .map(|(i, d)| Self::from_proto_in(|| format!("{field}[{i}]"), d))
            .collect()
    }

    /// Validates an optional wire digest that the call requires.
    pub fn from_required(field: &str, d: Option<&v1::Digest>) -> Result<Self, RuleError> {
        Self::from_required_in(|| field.to_string(), d)
    }

    /// [`Self::from_required`] with the field's name built only on error (list items).
    pub fn from_required_in(
        field: impl FnOnce() -> String,
        d: Option<&v1::Digest>,
    ) -> Result<Self, RuleError> {
        match d {
            Some(d) => Self::from_proto_in(field, d),
            None => Err(RuleError::Missing { field: field() }),
        }
    }

    pub fn to_proto(&self) -> v1::Digest {
        v1::Digest {
            hash: self.hash_hex(),
            size_bytes: self.size,
        }
    }
}

impl From<Digest> for v1::Digest {
    fn from(d: Digest) -> Self {
        d.to_proto()
    }
}

/// `HASH/SIZE`, the form the CLI prints and accepts.
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hash_hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = RuleError;

    /// Parses `HASH/SIZE`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (h, size) = s.split_once('/').ok_or_else(|| RuleError::Digest {
            field: "digest".into(),
            reason: format!("{s:?} is not of the form HASH/SIZE (64 hex characters, '/', bytes)"),
        })?;
        let hash = Self::parse_hash("digest", h)?;
        let size = size.parse::<u64>().map_err(|_| RuleError::Digest {
            field: "digest".into(),
            reason: format!("size {size:?} in {s:?} is not a whole number of bytes"),
        })?;
        Ok(Digest { hash, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_blake3_vectors() {
        // From the BLAKE3 reference test vectors and the BLAKE3 paper.
        assert_eq!(Digest::of_bytes(b"").hash_hex(), Digest::EMPTY_HASH_HEX);
        assert_eq!(
            Digest::of_bytes(b"abc").hash_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn parse_and_display_round_trip() {
        let d = Digest::of_bytes(b"hello");
        let s = d.to_string();
        assert_eq!(s.parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_bad_hashes() {
        let upper = "AF1349B9F5F9A1A6A0404DEA36DCC9499BCB25C9ADC112B7CC9A93CAE41F3262";
        let e = Digest::from_proto(
            "digest",
            &v1::Digest {
                hash: upper.into(),
                size_bytes: 0,
            },
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("digest.hash: hash \"AF13"), "{e}");
        let e = Digest::from_proto(
            "x",
            &v1::Digest {
                hash: "abc".into(),
                size_bytes: 0,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("has 3 characters"), "{e}");
        assert!("nope".parse::<Digest>().is_err());
        assert!(format!("{}/x", Digest::EMPTY_HASH_HEX)
            .parse::<Digest>()
            .is_err());
    }

    #[test]
    fn table_hex_matches_the_hex_crate_and_refuses_every_non_hex_byte() {
        for i in 0..1000u32 {
            let d = Digest::of_bytes(&i.to_le_bytes());
            assert_eq!(d.hash_hex(), hex::encode(d.hash()));
            assert_eq!(Digest::from_proto("d", &d.to_proto()).unwrap(), d);
        }
        let good = Digest::of_bytes(b"x").hash_hex();
        for bad in 0..=255u8 {
            if bad.is_ascii_digit() || (b'a'..=b'f').contains(&bad) {
                continue;
            }
            for pos in [0, 31, 63] {
                let mut h = good.clone().into_bytes();
                h[pos] = bad;
                let h = String::from_utf8_lossy(&h).into_owned();
                let e = Digest::from_proto_in(
                    || "digests[7]".into(),
                    &v1::Digest {
                        hash: h,
                        size_bytes: 1,
                    },
                );
                let e = e.expect_err("a non-hex byte is refused");
                assert!(e.to_string().starts_with("digests[7].hash: "), "{e}");
            }
        }
    }
}
