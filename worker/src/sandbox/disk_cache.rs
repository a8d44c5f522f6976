//! Compiled modules on disk, so a restarted worker does not compile again: one file per module
//! and engine, `<dir>/<module hash>-<engine hash>.cwasm`, authenticated with a key only this
//! worker holds.
//!
//! A compiled artifact is native code that wasmtime loads without checking it, so loading one
//! that someone else wrote would run their code outside the sandbox. Each file therefore carries
//! a keyed BLAKE3 MAC (key derived from the worker's secret identity) over its name and every
//! byte after the header; it is checked over the bytes in memory, and exactly those bytes are
//! loaded. A file that fails the check is deleted and the module compiled again.
//!
//! Layout: [`MAGIC`] (8 bytes) ‖ MAC (32 bytes) ‖ `Module::serialize` output.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use peergrid_proto::ContentHash;

use crate::limits;

const MAGIC: &[u8; 8] = b"PGCWASM1";
const HEADER_BYTES: usize = MAGIC.len() + blake3::OUT_LEN;

/// Where compiled modules are kept, and the key that proves this worker wrote them.
#[derive(Clone)]
pub struct ModuleCacheDir {
    pub dir: PathBuf,
    /// 32-byte key for the artifacts' MAC; derive it from the worker's secret identity
    /// (`Identity::derive_key(MODULE_CACHE_KEY_CONTEXT)`), never store it.
    pub mac_key: [u8; 32],
}

/// The BLAKE3 `derive_key` context of [`ModuleCacheDir::mac_key`].
pub const MODULE_CACHE_KEY_CONTEXT: &str = "peergrid/module-cache/v1";

impl std::fmt::Debug for ModuleCacheDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleCacheDir")
            .field("dir", &self.dir)
            .field("mac_key", &"<secret>")
            .finish()
    }
}

/// What [`DiskCache::read`] found.
pub(super) enum Lookup {
    /// The verified serialized module (without the header).
    Hit(Vec<u8>),
    Miss,
    /// A file was there but failed its check (and was deleted); why.
    Refused(String),
}

pub(super) struct DiskCache {
    dir: PathBuf,
    mac_key: [u8; 32],
    engine_hash: String,
}

impl DiskCache {
    pub(super) fn open(options: &ModuleCacheDir, engine_hash: String) -> std::io::Result<Self> {
        fs::create_dir_all(&options.dir)?;
        // Leftovers of writes interrupted by a crash.
        for entry in fs::read_dir(&options.dir)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir: options.dir.clone(),
            mac_key: options.mac_key,
            engine_hash,
        })
    }

    fn name(&self, module: &ContentHash) -> String {
        format!("{}-{}.cwasm", module.to_hex(), self.engine_hash)
    }

    fn mac(&self, name: &str, payload: &[u8]) -> blake3::Hash {
        let mut mac = blake3::Hasher::new_keyed(&self.mac_key);
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(payload);
        mac.finalize()
    }

    pub(super) fn read(&self, module: &ContentHash) -> Lookup {
        let name = self.name(module);
        let path = self.dir.join(&name);
        let mut bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(_) => return Lookup::Miss,
        };
        let refusal = if bytes.len() < HEADER_BYTES || &bytes[..MAGIC.len()] != MAGIC {
            Some("not a peergrid compiled module")
        } else {
            let stored = <[u8; 32]>::try_from(&bytes[MAGIC.len()..HEADER_BYTES])
                .expect("the header holds 32 MAC bytes");
            // `blake3::Hash` compares in constant time.
            if self.mac(&name, &bytes[HEADER_BYTES..]) != blake3::Hash::from(stored) {
                Some("its MAC does not match: not written by this worker, or altered")
            } else {
                None
            }
        };
        if let Some(reason) = refusal {
            let _ = fs::remove_file(&path);
            return Lookup::Refused(format!("{}: {reason}", path.display()));
        }
        // Most recently used last when evicting.
        if let Ok(file) = fs::File::options().append(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
        bytes.drain(..HEADER_BYTES);
        Lookup::Hit(bytes)
    }

    /// Writes atomically (temporary file, then rename), then evicts past the bounds.
    pub(super) fn write(&self, module: &ContentHash, serialized: &[u8]) -> std::io::Result<()> {
        let name = self.name(module);
        let mut temp = tempfile::Builder::new()
            .prefix(&name)
            .suffix(".tmp")
            .tempfile_in(&self.dir)?;
        temp.write_all(MAGIC)?;
        temp.write_all(self.mac(&name, serialized).as_bytes())?;
        temp.write_all(serialized)?;
        temp.as_file().sync_data()?;
        temp.persist(self.dir.join(&name))
            .map_err(|error| error.error)?;
        self.evict(
            limits::MODULE_DISK_CACHE_ENTRIES,
            limits::MODULE_DISK_CACHE_BYTES,
        );
        Ok(())
    }

    /// Deletes least recently used artifacts until at most `entries_max` of at most `bytes_max`
    /// together are left ([`limits::MODULE_DISK_CACHE_ENTRIES`] and
    /// [`limits::MODULE_DISK_CACHE_BYTES`]).
    fn evict(&self, entries_max: usize, bytes_max: u64) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".cwasm"))
            .filter_map(|entry| {
                let meta = entry.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), entry.path()))
            })
            .collect();
        files.sort();
        let mut count = files.len();
        let mut bytes: u64 = files.iter().map(|(_, len, _)| len).sum();
        for (_, len, path) in files {
            if count <= entries_max && bytes <= bytes_max {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                count -= 1;
                bytes -= len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cache(dir: &std::path::Path) -> DiskCache {
        let options = ModuleCacheDir {
            dir: dir.to_owned(),
            mac_key: [1; 32],
        };
        DiskCache::open(&options, "engine".to_owned()).unwrap()
    }

    /// Writes an artifact of `len` payload bytes for `module`, last used `age_s` seconds ago.
    fn put(cache: &DiskCache, module: &ContentHash, len: usize, age_s: u64) {
        cache.write(module, &vec![0; len]).unwrap();
        let file = fs::File::options()
            .append(true)
            .open(cache.dir.join(cache.name(module)))
            .unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
    }

    fn cached(cache: &DiskCache, module: &ContentHash) -> bool {
        cache.dir.join(cache.name(module)).exists()
    }

    #[test]
    fn eviction_drops_the_least_recently_used_until_both_bounds_hold() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        let [a, b, c] = [b"a", b"b", b"c"].map(|name| ContentHash::of(name));
        put(&cache, &a, 100, 30);
        put(&cache, &b, 100, 20);
        put(&cache, &c, 100, 10);
        // Reading `a` makes it the most recently used.
        assert!(matches!(cache.read(&a), Lookup::Hit(bytes) if bytes.len() == 100));

        cache.evict(2, u64::MAX);
        assert!(cached(&cache, &a) && !cached(&cache, &b) && cached(&cache, &c));

        let one_file = (HEADER_BYTES + 100) as u64;
        cache.evict(usize::MAX, one_file);
        assert!(cached(&cache, &a) && !cached(&cache, &c));
    }
}
