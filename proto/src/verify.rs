//! The hash-while-streaming verifier both sides use: bytes are hashed as they pass, and
//! only a stream whose size and BLAKE3 hash match the expected digest is accepted.

use crate::digest::Digest;

/// Why streamed bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("received more than the expected {expected} bytes")]
    TooLong { expected: u64 },
    #[error("size mismatch: expected {expected} bytes, received {actual}")]
    Size { expected: u64, actual: u64 },
    #[error("hash mismatch: expected {expected}, content hashes to {actual}")]
    Hash { expected: String, actual: String },
}

/// Hashes bytes as they pass and checks them against an expected digest.
pub struct Verifier {
    expected: Digest,
    hasher: blake3::Hasher,
    seen: u64,
}

impl Verifier {
    pub fn new(expected: Digest) -> Self {
        Verifier {
            expected,
            hasher: blake3::Hasher::new(),
            seen: 0,
        }
    }

    /// Feeds the next bytes. Refuses as soon as more bytes arrive than the digest's size.
    pub fn update(&mut self, data: &[u8]) -> Result<(), Mismatch> {
        self.count(data.len())?;
        // Large chunks hash on several threads; small ones are not worth the hand-off.
        if data.len() >= 128 * 1024 {
            self.hasher.update_rayon(data);
        } else {
            self.hasher.update(data);
        }
        Ok(())
    }

    /// Feeds the next bytes, hashed on this thread only: for a caller already on a
    /// thread of its own among others doing the same (a server's reads), where handing
    /// a chunk to a thread pool costs more than it saves.
    pub fn update_here(&mut self, data: &[u8]) -> Result<(), Mismatch> {
        self.count(data.len())?;
        self.hasher.update(data);
        Ok(())
    }

    fn count(&mut self, n: usize) -> Result<(), Mismatch> {
        let seen = self.seen + n as u64;
        if seen > self.expected.size() {
            return Err(Mismatch::TooLong {
                expected: self.expected.size(),
            });
        }
        self.seen = seen;
        Ok(())
    }

    /// Checks the bytes seen so far against the expected digest, as [`Verifier::finish`]
    /// does, without consuming the verifier.
    pub fn check(&self) -> Result<Digest, Mismatch> {
        if self.seen != self.expected.size() {
            return Err(Mismatch::Size {
                expected: self.expected.size(),
                actual: self.seen,
            });
        }
        let actual = *self.hasher.finalize().as_bytes();
        if &actual != self.expected.hash() {
            return Err(Mismatch::Hash {
                expected: self.expected.hash_hex(),
                actual: hex::encode(actual),
            });
        }
        Ok(self.expected)
    }

    /// The digest the bytes must hash to.
    pub fn expected(&self) -> Digest {
        self.expected
    }

    /// Bytes seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Finishes: the bytes seen must be exactly the expected digest.
    pub fn finish(self) -> Result<Digest, Mismatch> {
        self.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_matching_bytes_in_chunks() {
        let data = vec![7u8; 300_000];
        let d = Digest::of_bytes(&data);
        let mut v = Verifier::new(d);
        for c in data.chunks(65_536) {
            v.update(c).unwrap();
        }
        assert_eq!(v.finish().unwrap(), d);
    }

    #[test]
    fn refuses_short_long_and_wrong() {
        let d = Digest::of_bytes(b"abc");
        let mut v = Verifier::new(d);
        v.update(b"ab").unwrap();
        assert_eq!(
            v.finish().unwrap_err(),
            Mismatch::Size {
                expected: 3,
                actual: 2
            }
        );
        let mut v = Verifier::new(d);
        assert!(matches!(v.update(b"abcd"), Err(Mismatch::TooLong { .. })));
        let mut v = Verifier::new(d);
        v.update(b"abd").unwrap();
        assert!(matches!(v.finish(), Err(Mismatch::Hash { .. })));
    }
}
