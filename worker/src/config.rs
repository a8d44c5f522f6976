//! The worker's configuration: command-line flags over a TOML file over documented defaults.
//! `worker/peergrid-worker.example.toml` lists every key with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use peergrid_proto::PublicKey;
use serde::{Deserialize, Serialize};

use crate::blobs::BlobBounds;
use crate::daemon::{LoadSourceKind, WorkerOptions};
use crate::limits;

/// Everything that can be set, from flags or the file; `None` means "not given here".
/// Serialised (`None`s left out), it is the config file `install` writes.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub trust: Option<Vec<String>>,
    pub trust_any_key: Option<bool>,
    pub cores: Option<u32>,
    pub memory_mb: Option<u64>,
    pub blob_store_max_bytes: Option<u64>,
    pub blob_quota_bytes: Option<u64>,
    pub idle_only: Option<bool>,
    pub busy_threshold: Option<f32>,
    pub sample_interval_ms: Option<u64>,
    pub gossip: Option<bool>,
    /// Each `KEY@IP:PORT`.
    pub seeds: Option<Vec<String>>,
    pub advertise: Option<std::net::IpAddr>,
    /// Each `https://HOST:PORT#PIN`.
    pub relays: Option<Vec<String>>,
    pub owner_load_file: Option<PathBuf>,
    pub lie_rate: Option<f64>,
    pub fingerprint_tag: Option<String>,
    /// The local HTTP listener: `/metrics` and the donor's dashboard.
    pub http: Option<SocketAddr>,
}

/// Why the configuration is unusable. Each names the file or the setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no data directory: give --data-dir DIR or `data-dir = \"DIR\"` in the config file")]
    NoDataDir,
    #[error("trust key {key:?}: {reason}")]
    BadTrustKey { key: String, reason: String },
    #[error("seed: {0}")]
    BadSeed(#[from] peergrid_proto::transport::PeerAddrError),
    #[error("relay: {0}")]
    BadRelay(#[from] peergrid_proto::relays::RelaySpecError),
    #[error("{0} relays given, more than the {max} allowed", max = peergrid_proto::relays::MAX_RELAYS)]
    TooManyRelays(usize),
    #[error("{setting} = {value} is out of range: {expected}")]
    OutOfRange {
        setting: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl Settings {
    /// Reads a config file. Relative paths in it are relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut settings: Self = toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            // toml's message names the line and column and quotes the line.
            message: error.to_string().trim_end().replace('\n', " "),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for dir in [&mut settings.data_dir, &mut settings.owner_load_file]
            .into_iter()
            .flatten()
        {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
        Ok(settings)
    }

    /// `self` where given, else `file`.
    pub fn over(self, file: Settings) -> Settings {
        Settings {
            listen: self.listen.or(file.listen),
            data_dir: self.data_dir.or(file.data_dir),
            trust: self.trust.or(file.trust),
            trust_any_key: self.trust_any_key.or(file.trust_any_key),
            cores: self.cores.or(file.cores),
            memory_mb: self.memory_mb.or(file.memory_mb),
            blob_store_max_bytes: self.blob_store_max_bytes.or(file.blob_store_max_bytes),
            blob_quota_bytes: self.blob_quota_bytes.or(file.blob_quota_bytes),
            idle_only: self.idle_only.or(file.idle_only),
            busy_threshold: self.busy_threshold.or(file.busy_threshold),
            sample_interval_ms: self.sample_interval_ms.or(file.sample_interval_ms),
            gossip: self.gossip.or(file.gossip),
            seeds: self.seeds.or(file.seeds),
            advertise: self.advertise.or(file.advertise),
            relays: self.relays.or(file.relays),
            owner_load_file: self.owner_load_file.or(file.owner_load_file),
            lie_rate: self.lie_rate.or(file.lie_rate),
            fingerprint_tag: self.fingerprint_tag.or(file.fingerprint_tag),
            http: self.http.or(file.http),
        }
    }

    /// Fills the defaults and checks every value.
    pub fn resolve(self) -> Result<WorkerOptions, ConfigError> {
        let mut options = WorkerOptions::new(self.data_dir.ok_or(ConfigError::NoDataDir)?);
        if let Some(listen) = self.listen {
            options.listen = listen;
        }
        for key in self.trust.unwrap_or_default() {
            let parsed: PublicKey =
                key.parse()
                    .map_err(|error: peergrid_proto::identity::PublicKeyError| {
                        ConfigError::BadTrustKey {
                            key: key.clone(),
                            reason: error.reason,
                        }
                    })?;
            options.trust.push(parsed);
        }
        options.trust_any_key = self.trust_any_key.unwrap_or(false);
        if let Some(max_bytes) = self.blob_store_max_bytes {
            if max_bytes < limits::MIN_BLOB_STORE_MAX_BYTES {
                return Err(out_of_range(
                    "blob-store-max-bytes",
                    max_bytes,
                    "at least 1048576 (1 MiB)",
                ));
            }
            // The default quota follows the cap.
            options.blobs = BlobBounds::with_max_bytes(max_bytes);
        }
        if let Some(quota_bytes) = self.blob_quota_bytes {
            if !(limits::BLOB_BLOCK_BYTES..=options.blobs.max_bytes).contains(&quota_bytes) {
                return Err(out_of_range(
                    "blob-quota-bytes",
                    quota_bytes,
                    "at least 4096 and at most blob-store-max-bytes",
                ));
            }
            options.blobs.quota_bytes = quota_bytes;
        }
        let policy = &mut options.policy;
        if let Some(cores) = self.cores {
            if cores == 0 || cores > 1024 {
                return Err(out_of_range("cores", cores, "1 to 1024"));
            }
            policy.cores = cores;
        }
        if let Some(memory_mb) = self.memory_mb {
            if memory_mb == 0 {
                return Err(out_of_range("memory-mb", memory_mb, "at least 1"));
            }
            policy.memory_bytes = memory_mb.saturating_mul(1024 * 1024);
        }
        policy.idle_only = self.idle_only.unwrap_or(false);
        if let Some(threshold) = self.busy_threshold {
            if !(0.0..=100.0).contains(&threshold) {
                return Err(out_of_range(
                    "busy-threshold",
                    threshold,
                    "a percentage, 0 to 100",
                ));
            }
            policy.busy_threshold_pct = threshold;
        }
        if let Some(interval) = self.sample_interval_ms {
            if !(10..=60_000).contains(&interval) {
                return Err(out_of_range("sample-interval-ms", interval, "10 to 60000"));
            }
            policy.sample_interval = Duration::from_millis(interval);
        }
        options.gossip = self.gossip.unwrap_or(false);
        for seed in self.seeds.unwrap_or_default() {
            options.seeds.push(seed.parse()?);
        }
        options.advertise = self.advertise;
        options.http = self.http;
        let relays = self.relays.unwrap_or_default();
        if relays.len() > peergrid_proto::relays::MAX_RELAYS {
            return Err(ConfigError::TooManyRelays(relays.len()));
        }
        for relay in relays {
            options.relays.push(relay.parse()?);
        }
        if let Some(rate) = self.lie_rate {
            if !(0.0..=1.0).contains(&rate) {
                return Err(out_of_range("lie-rate", rate, "a fraction, 0 to 1"));
            }
            options.lie_rate = rate;
        }
        if let Some(tag) = self.fingerprint_tag {
            let valid = !tag.is_empty()
                && tag.len() <= 32
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(out_of_range(
                    "fingerprint-tag",
                    tag,
                    "1 to 32 of A-Z a-z 0-9 - _",
                ));
            }
            options.fingerprint_tag = Some(tag);
        }
        if let Some(path) = self.owner_load_file {
            options.load = LoadSourceKind::File(path);
        }
        Ok(options)
    }
}

fn out_of_range(
    setting: &'static str,
    value: impl ToString,
    expected: &'static str,
) -> ConfigError {
    ConfigError::OutOfRange {
        setting,
        value: value.to_string(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_flags_override_it() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("peergrid-worker.example.toml");
        let file = Settings::from_file(&example).unwrap();
        assert_eq!(file.cores, Some(1));
        let flags = Settings {
            cores: Some(3),
            ..Settings::default()
        };
        let options = flags.over(file).resolve().unwrap();
        assert_eq!(options.policy.cores, 3);
        assert!(
            options.data_dir.starts_with(env!("CARGO_MANIFEST_DIR")),
            "relative to the file"
        );
    }

    #[test]
    fn a_seed_without_its_key_is_refused_with_the_form_to_use() {
        let settings = Settings {
            data_dir: Some("/tmp/x".into()),
            seeds: Some(vec!["127.0.0.1:7946".into()]),
            ..Settings::default()
        };
        let error = settings.resolve().unwrap_err().to_string();
        assert!(error.contains("KEY@IP:PORT"), "{error}");
    }

    #[test]
    fn relays_are_parsed_bounded_and_a_bad_one_is_named() {
        let with = |relays: Vec<String>| Settings {
            data_dir: Some("/tmp/x".into()),
            relays: Some(relays),
            ..Settings::default()
        };
        let pin = "ab".repeat(32);
        let options = with(vec![format!("https://203.0.113.10:3340#{pin}")])
            .resolve()
            .unwrap();
        assert_eq!(options.relays.len(), 1);
        assert_eq!(options.relays[0].pin, Some([0xab; 32]));

        let error = with(vec!["http://203.0.113.10:3340".into()])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("relay: ") && error.contains("not https"),
            "{error}"
        );

        let too_many = (0..=peergrid_proto::relays::MAX_RELAYS)
            .map(|n| format!("https://203.0.113.{n}:3340"))
            .collect();
        let error = with(too_many).resolve().unwrap_err().to_string();
        assert!(
            error.contains("17 relays given, more than the 16 allowed"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_file_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.toml");
        std::fs::write(&path, "cores = 2\ncorez = 3\n").unwrap();
        let error = Settings::from_file(&path).unwrap_err().to_string();
        assert!(
            error.contains("worker.toml") && error.contains("line 2"),
            "{error}"
        );
        assert!(error.contains("corez"), "{error}");
    }

    #[test]
    fn the_blob_quota_defaults_to_a_quarter_of_the_cap_and_may_not_pass_it() {
        let settings = |max: Option<u64>, quota: Option<u64>| Settings {
            data_dir: Some("/tmp/x".into()),
            blob_store_max_bytes: max,
            blob_quota_bytes: quota,
            ..Settings::default()
        };
        let defaults = settings(None, None).resolve().unwrap().blobs;
        assert_eq!(defaults.max_bytes, limits::DEFAULT_BLOB_STORE_MAX_BYTES);
        assert_eq!(defaults.quota_bytes, defaults.max_bytes / 4);
        let small = settings(Some(64 << 20), None).resolve().unwrap().blobs;
        assert_eq!(
            small.quota_bytes,
            16 << 20,
            "the default quota follows the cap"
        );
        let set = settings(Some(64 << 20), Some(8 << 20))
            .resolve()
            .unwrap()
            .blobs;
        assert_eq!((set.max_bytes, set.quota_bytes), (64 << 20, 8 << 20));
        for (max, quota, named) in [
            (Some(1000), None, "blob-store-max-bytes"),
            (Some(64 << 20), Some(65 << 20), "blob-quota-bytes"),
            (None, Some(0), "blob-quota-bytes"),
        ] {
            let error = settings(max, quota).resolve().unwrap_err().to_string();
            assert!(error.contains(named), "{error}");
        }
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let settings = Settings {
            data_dir: Some("/tmp/x".into()),
            busy_threshold: Some(150.0),
            ..Settings::default()
        };
        assert!(
            settings
                .resolve()
                .unwrap_err()
                .to_string()
                .contains("busy-threshold")
        );
    }
}
