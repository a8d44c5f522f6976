//! `peergrid run`'s cache of compiled modules: the worker's disk cache (one authenticated file
//! per module and engine), under the user's cache directory, so that running the same large
//! module again loads it instead of compiling it (ARCHITECTURE.md, "Compiled-module caches").
//!
//! A compiled artifact is native code loaded unchecked, so each file carries a keyed MAC, as on a
//! worker. A worker derives the key from its identity; `run` needs no identity, so the secret is
//! 32 random bytes in `<dir>/run-cache.key`, made on first use (mode 0600, in a 0700 directory)
//! and never shared. The key is derived from it exactly as a worker derives its own
//! ([`MODULE_CACHE_KEY_CONTEXT`]). A key file that others may read or write disables the cache
//! (with a warning): whoever can write it could make `run` load their code.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use peergrid_worker::sandbox::{MODULE_CACHE_KEY_CONTEXT, ModuleCacheDir};

/// The secret behind the cache's MAC key, in the cache directory.
pub const KEY_FILE: &str = "run-cache.key";
const SECRET_BYTES: usize = 32;

/// `run`'s cache directory when none is given: `<the platform's cache dir>/peergrid` (e.g.
/// `~/.cache/peergrid`).
pub fn default_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("peergrid")
}

/// Why the cache cannot be used; `run` goes on without it.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot use the module cache in {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the module cache key {} can be read or written by others (mode {mode:o}): not used; make it 0600 or delete it",
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("the module cache key {} is not {SECRET_BYTES} bytes: delete it", path.display())]
    BadKey { path: PathBuf },
}

/// The cache in `dir`: its compiled modules in `dir/compiled`, authenticated with the key from
/// `dir/run-cache.key` (made now if missing).
pub fn open(dir: &Path) -> Result<ModuleCacheDir, CacheError> {
    let io = |source| CacheError::Io {
        dir: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let path = dir.join(KEY_FILE);
    let secret = match read_secret(&path) {
        Err(CacheError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            make_secret(dir, &path)?
        }
        other => other?,
    };
    Ok(ModuleCacheDir {
        dir: dir.join("compiled"),
        mac_key: blake3::derive_key(MODULE_CACHE_KEY_CONTEXT, &secret),
    })
}

/// Makes the key file at `path`, atomically: written whole under a temporary name, then linked
/// into place, so a `run` racing this one sees no key or the whole key. If another made it
/// first, that one is used.
fn make_secret(dir: &Path, path: &Path) -> Result<[u8; SECRET_BYTES], CacheError> {
    let io = |source| CacheError::Io {
        dir: dir.to_owned(),
        source,
    };
    let mut secret = [0u8; SECRET_BYTES];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
    // tempfile makes the file 0600.
    let mut partial = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    partial
        .write_all(&secret)
        .and_then(|()| partial.as_file().sync_all())
        .map_err(io)?;
    match std::fs::hard_link(partial.path(), path) {
        Ok(()) => Ok(secret),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read_secret(path),
        Err(error) => Err(io(error)),
    }
}

/// The secret in an existing key file, if only its owner may read and write it.
fn read_secret(path: &Path) -> Result<[u8; SECRET_BYTES], CacheError> {
    let io = |source| CacheError::Io {
        dir: path.parent().unwrap_or(Path::new(".")).to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    let mode = metadata.permissions().mode() & 0o777;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if mode & 0o077 != 0 || metadata.uid() != me {
        return Err(CacheError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    let mut secret = Vec::with_capacity(SECRET_BYTES + 1);
    Read::by_ref(&mut file)
        .take(SECRET_BYTES as u64 + 1)
        .read_to_end(&mut secret)
        .map_err(io)?;
    secret.try_into().map_err(|_| CacheError::BadKey {
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let first = open(&cache).unwrap();
        let second = open(&cache).unwrap();
        assert_eq!(first.mac_key, second.mac_key);
        let key = std::fs::metadata(cache.join(KEY_FILE)).unwrap();
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        // Another cache directory has another key: an artifact from one does not load in the
        // other.
        assert_ne!(
            open(&dir.path().join("other")).unwrap().mac_key,
            first.mac_key
        );
    }

    #[test]
    fn a_key_others_can_read_or_a_bad_key_disables_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            open(dir.path()),
            Err(CacheError::Exposed { mode: 0o644, .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(open(dir.path()), Err(CacheError::BadKey { .. })));
    }
}
