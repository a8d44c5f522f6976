//! Ed25519 identities: the key a worker signs receipts with, the key a submitter signs tasks
//! with, and the files they live in.
//!
//! A secret key file holds the 32-byte Ed25519 seed as 64 hex characters and a newline; it must
//! not be readable by group or others (as ssh requires of its keys). A public key file holds the
//! 32-byte public key as 64 hex characters.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Valid public keys [`PublicKey::from_slice`] keeps decompressed; past it, the cache starts
/// over.
pub const DECOMPRESSED_KEYS: usize = 4096;

/// An Ed25519 public key that is known to be a valid curve point: an invalid one cannot exist.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

/// A byte or hex string that is not a valid Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an Ed25519 public key: {reason}")]
pub struct PublicKeyError {
    pub reason: String,
}

impl PublicKey {
    /// Reads a public key as it travels on the wire: 32 bytes, a valid point.
    ///
    /// Decompressing the point costs about as much as a third of a signature check, and a
    /// worker or submitter sees the same few keys on every task and receipt: the last
    /// [`DECOMPRESSED_KEYS`] valid keys are kept decompressed (the same bytes always give the
    /// same point, so this changes no answer).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, PublicKeyError> {
        let array = <[u8; 32]>::try_from(bytes).map_err(|_| PublicKeyError {
            reason: format!("expected 32 bytes, got {}", bytes.len()),
        })?;
        static CACHE: std::sync::LazyLock<std::sync::Mutex<HashMap<[u8; 32], VerifyingKey>>> =
            std::sync::LazyLock::new(Default::default);
        let cached = CACHE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&array)
            .copied();
        if let Some(key) = cached {
            return Ok(Self(key));
        }
        let key = VerifyingKey::from_bytes(&array).map_err(|_| PublicKeyError {
            reason: "the 32 bytes are not a valid curve point".into(),
        })?;
        let mut cache = CACHE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= DECOMPRESSED_KEYS {
            cache.clear();
        }
        cache.insert(array, key);
        Ok(Self(key))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// The first 12 hex characters: how tables and logs name a peer.
    pub fn short(&self) -> String {
        hex::encode(&self.0.as_bytes()[..6])
    }

    /// Verifies `signature` over `message` (strict verification: rejects malleable and
    /// small-order forms).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = Signature::from_slice(signature) else {
            return false;
        };
        self.0.verify_strict(message, &signature).is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl FromStr for PublicKey {
    type Err = PublicKeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(text.trim()).map_err(|_| PublicKeyError {
            reason: format!("{:?} is not 64 hex characters", text.trim()),
        })?;
        Self::from_slice(&bytes)
    }
}

/// A signing identity (Ed25519 secret key). Its bytes are zeroed when dropped.
pub struct Identity {
    key: SigningKey,
}

/// Why a key file could not be read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {path} is not a peergrid secret key: expected 64 hex characters (an Ed25519 seed), as written by `peergrid keygen`"
    )]
    Malformed { path: PathBuf },
    #[error(
        "key file {path} is readable by others (mode {mode:03o}); secret keys must be private: run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("public key file {path}: {source}")]
    BadPublicKey {
        path: PathBuf,
        source: PublicKeyError,
    },
}

impl Identity {
    /// A fresh identity from the operating system's random generator.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// The identity whose Ed25519 seed is `seed` (deterministic; for tests and key files).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// A 32-byte key for `context` (BLAKE3 `derive_key` over the secret seed), for the holder's
    /// own secrets such as MACs on files only it may write. The seed itself is never exposed;
    /// distinct contexts give independent keys.
    pub fn derive_key(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, self.key.as_bytes())
    }

    /// The same key as iroh's endpoint key: the key every connection of this peer proves
    /// (see [`crate::transport`]).
    pub fn transport_key(&self) -> iroh::SecretKey {
        iroh::SecretKey::from_bytes(&self.key.to_bytes())
    }

    /// Signs `message` (the caller prepends the domain string; see [`crate::signing`]).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Reads a secret key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        check_private(path)?;
        let seed = hex::decode(text.trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| KeyFileError::Malformed {
                path: path.to_owned(),
            })?;
        Ok(Self::from_seed(seed))
    }

    /// Writes the secret key to `path` (mode 0600, created exclusively: an existing file is never
    /// overwritten) and the public key as hex to `path` + ".pub".
    pub fn save(&self, path: &Path) -> Result<PathBuf, KeyFileError> {
        let write_error = |path: &Path| {
            let path = path.to_owned();
            move |source| KeyFileError::Write { path, source }
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(write_error(path))?;
        let secret = format!("{}\n", hex::encode(self.key.to_bytes()));
        std::io::Write::write_all(&mut file, secret.as_bytes()).map_err(write_error(path))?;
        file.sync_all().map_err(write_error(path))?;
        let public_path = public_key_path(path);
        std::fs::write(&public_path, format!("{}\n", self.public_key()))
            .map_err(write_error(&public_path))?;
        Ok(public_path)
    }

    /// Loads the key at `path`, or creates it there (0600) when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyFileError> {
        if path.exists() {
            return Self::load(path);
        }
        let identity = Self::generate();
        identity.save(path)?;
        Ok(identity)
    }
}

/// Reads a public key file (hex, surrounding whitespace ignored).
pub fn load_public_key(path: &Path) -> Result<PublicKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse().map_err(|source| KeyFileError::BadPublicKey {
        path: path.to_owned(),
        source,
    })
}

/// Where `peergrid keygen` puts the public key of the secret key at `path`.
pub fn public_key_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), KeyFileError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_kept_decompressed_give_the_same_answers() {
        let identity = Identity::from_seed([7; 32]);
        let bytes = identity.public_key().to_bytes();
        let first = PublicKey::from_slice(&bytes).unwrap();
        let again = PublicKey::from_slice(&bytes).unwrap();
        assert_eq!(first, again);
        let signature = identity.sign(b"m");
        assert!(again.verify(b"m", &signature));
        assert!(!again.verify(b"n", &signature));
        // Not a point (y = 2 has no x on the curve), before and after valid keys were cached.
        let mut invalid = [0u8; 32];
        invalid[0] = 2;
        assert!(PublicKey::from_slice(&invalid).is_err());
        assert!(PublicKey::from_slice(&invalid).is_err());
    }

    #[test]
    fn derived_keys_depend_on_the_context_and_the_secret_and_never_are_the_seed() {
        let one = Identity::from_seed([1; 32]);
        let key = one.derive_key("peergrid/module-cache/v1");
        assert_eq!(
            key,
            Identity::from_seed([1; 32]).derive_key("peergrid/module-cache/v1")
        );
        assert_ne!(key, one.derive_key("peergrid/other/v1"));
        assert_ne!(
            key,
            Identity::from_seed([2; 32]).derive_key("peergrid/module-cache/v1")
        );
        assert_ne!(key, [1; 32]);
        assert_ne!(&key[..], one.public_key().to_bytes().as_slice());
    }

    #[test]
    fn key_file_round_trip_is_private_and_refuses_open_modes() {
        let dir = tempfile_dir();
        let path = dir.join("key");
        let identity = Identity::generate();
        let public_path = identity.save(&path).unwrap();
        let loaded = Identity::load(&path).unwrap();
        assert_eq!(loaded.public_key(), identity.public_key());
        assert_eq!(
            load_public_key(&public_path).unwrap(),
            identity.public_key()
        );
        assert!(matches!(
            identity.save(&path),
            Err(KeyFileError::Write { .. })
        ));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let error = Identity::load(&path).err().unwrap();
            assert!(error.to_string().contains("chmod 600"), "{error}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn malformed_key_file_names_the_file() {
        let dir = tempfile_dir();
        let path = dir.join("bad");
        std::fs::write(&path, "not a key\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let error = Identity::load(&path).err().unwrap().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn public_keys_are_validated_on_construction() {
        assert!(PublicKey::from_slice(&[1; 31]).is_err());
        assert!("zz".parse::<PublicKey>().is_err());
        let key = Identity::from_seed([7; 32]).public_key();
        assert_eq!(key.to_hex().parse::<PublicKey>().unwrap(), key);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "peergrid-proto-test-{}-{}",
            std::process::id(),
            hex::encode(Identity::generate().public_key().to_bytes())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
