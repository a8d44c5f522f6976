//! BLAKE3 content hashes: how modules, input files, tasks and outputs are named.

use std::fmt;
use std::str::FromStr;

/// A BLAKE3 hash (32 bytes). Displayed and parsed as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash([u8; 32]);

/// A byte string that is not a 32-byte hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a content hash is 32 bytes (64 hex characters), got {got}")]
pub struct HashLengthError {
    /// What was received, described for the message.
    pub got: String,
}

impl ContentHash {
    /// Hashes `bytes` with BLAKE3.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Wraps a finished BLAKE3 hash.
    pub fn from_blake3(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }

    /// Reads a hash as it travels on the wire: exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, HashLengthError> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| HashLengthError {
                got: format!("{} bytes", bytes.len()),
            })
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_vec(&self) -> Vec<u8> {
        self.0.to_vec()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex characters, for logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

impl FromStr for ContentHash {
    type Err = HashLengthError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(text).map_err(|_| HashLengthError {
            got: format!("{text:?}, which is not hex"),
        })?;
        Self::from_slice(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_known_vector() {
        // BLAKE3 of the empty input, from the BLAKE3 specification's test vectors.
        let empty = ContentHash::of(b"");
        assert_eq!(
            empty.to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(empty.to_hex().parse::<ContentHash>().unwrap(), empty);
        assert!("abcd".parse::<ContentHash>().is_err());
        assert!(ContentHash::from_slice(&[0; 31]).is_err());
    }
}
