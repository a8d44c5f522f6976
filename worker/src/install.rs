//! `peergrid-worker install` and `uninstall`: the worker as a systemd service, for the donor's
//! user (`--user`) or for the whole machine (`--system`).
//!
//! Install writes the worker's own config file (its flags, checked by [`Settings::resolve`]
//! before anything is written) and a unit that runs `peergrid-worker --config FILE` in a sandbox
//! of its own, with the donor's memory cap as `MemoryMax=` and idle CPU and I/O scheduling.
//! Uninstall removes both and keeps the data directory (the worker's key and credit ledger)
//! unless asked to purge it. Rendering ([`render_unit`], [`render_config`]) is pure; [`install`]
//! and [`uninstall`] do the file work. Neither runs `systemctl`: they print what to run.
//! ARCHITECTURE.md, "Service install", says why each setting is what it is.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, Settings};
use crate::limits;

/// The unit's file name, in both scopes.
pub const UNIT_NAME: &str = "peergrid-worker.service";
/// First words of both files install writes; uninstall removes only files that begin with them.
const MARKER: &str = "# Written by `peergrid-worker install";
/// The system service's state directory under `/var/lib` (`StateDirectory=`).
const SYSTEM_STATE_DIR: &str = "peergrid-worker";
/// The mode of the data directory, which holds the worker's private key.
const DATA_DIR_MODE: u32 = 0o700;
const MIB: u64 = 1024 * 1024;

/// Whose service: the donor's user manager's, or the machine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    System,
}

impl Scope {
    /// The flag that names it, as the donor typed it.
    pub fn flag(self) -> &'static str {
        match self {
            Scope::User => "--user",
            Scope::System => "--system",
        }
    }

    fn systemctl(self) -> &'static str {
        match self {
            Scope::User => "systemctl --user",
            Scope::System => "systemctl",
        }
    }

    fn journalctl(self) -> &'static str {
        match self {
            Scope::User => "journalctl --user",
            Scope::System => "journalctl",
        }
    }

    /// The target that starts the service: the user manager's at login (or at boot, with
    /// lingering), the machine's at boot.
    fn wanted_by(self) -> &'static str {
        match self {
            Scope::User => "default.target",
            Scope::System => "multi-user.target",
        }
    }
}

/// The directories a user install goes under, from the environment (XDG Base Directory:
/// `$XDG_CONFIG_HOME`, default `~/.config`; `$XDG_DATA_HOME`, default `~/.local/share`).
#[derive(Debug, Clone, Default)]
pub struct UserDirs {
    pub home: Option<PathBuf>,
    pub config_home: Option<PathBuf>,
    pub data_home: Option<PathBuf>,
}

impl UserDirs {
    /// `HOME`, `XDG_CONFIG_HOME` and `XDG_DATA_HOME`; empty or relative values count as unset,
    /// as the XDG specification says.
    pub fn from_env() -> Self {
        let absolute = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .filter(|path| path.is_absolute())
        };
        Self {
            home: absolute("HOME"),
            config_home: absolute("XDG_CONFIG_HOME"),
            data_home: absolute("XDG_DATA_HOME"),
        }
    }
}

/// Where an installed service's files are, as the installed system sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub scope: Scope,
    pub unit: PathBuf,
    pub config: PathBuf,
    /// The data directory a service gets unless `--data-dir` says otherwise (a user install
    /// only): the worker's key, blobs, compiled modules and credit ledger.
    pub data_dir: PathBuf,
    /// The link `systemctl enable` makes; while it exists, the service is enabled.
    pub enabled_link: PathBuf,
}

impl Layout {
    /// The usual places: `~/.config/systemd/user/`, `~/.config/peergrid/worker.toml` and
    /// `~/.local/share/peergrid/worker` (or under the XDG directories) for a user;
    /// `/etc/systemd/system/`, `/etc/peergrid/worker.toml` and `/var/lib/peergrid-worker` for
    /// the machine.
    ///
    /// # Errors
    /// [`InstallError::NoHome`] for a user install without an absolute `HOME` or XDG directories.
    pub fn new(scope: Scope, dirs: &UserDirs) -> Result<Self, InstallError> {
        let (units, config_dir, data_dir) = match scope {
            Scope::User => {
                let home = || dirs.home.clone().ok_or(InstallError::NoHome);
                let config_home = match &dirs.config_home {
                    Some(dir) => dir.clone(),
                    None => home()?.join(".config"),
                };
                let data_home = match &dirs.data_home {
                    Some(dir) => dir.clone(),
                    None => home()?.join(".local/share"),
                };
                (
                    config_home.join("systemd/user"),
                    config_home.join("peergrid"),
                    data_home.join("peergrid/worker"),
                )
            }
            Scope::System => (
                PathBuf::from("/etc/systemd/system"),
                PathBuf::from("/etc/peergrid"),
                Path::new("/var/lib").join(SYSTEM_STATE_DIR),
            ),
        };
        Ok(Self {
            scope,
            unit: units.join(UNIT_NAME),
            config: config_dir.join("worker.toml"),
            data_dir,
            enabled_link: units
                .join(format!("{}.wants", scope.wanted_by()))
                .join(UNIT_NAME),
        })
    }
}

/// What `peergrid-worker install` was asked for.
#[derive(Debug, Clone)]
pub struct InstallRequest {
    pub scope: Scope,
    /// The worker's flags (over its `--config` file, if one was given).
    pub settings: Settings,
    /// The binary the unit runs: the one doing the install.
    pub executable: PathBuf,
    /// Write under this directory as if it were `/` (packaging, tests); paths inside the files
    /// are those of the installed system.
    pub root: Option<PathBuf>,
    /// Replace an existing unit and config file.
    pub force: bool,
}

/// What [`install`] wrote.
#[derive(Debug, Clone)]
pub struct Installed {
    pub layout: Layout,
    pub root: Option<PathBuf>,
    /// The config file as written (data directory, cores and memory filled in).
    pub settings: Settings,
    pub memory_max_bytes: u64,
    /// Whether an earlier unit or config file was replaced (`--force`).
    pub replaced: bool,
}

impl Installed {
    /// What `install` prints: the files, the memory cap, and the commands to run next.
    pub fn report(&self) -> String {
        let scope = self.layout.scope;
        let systemctl = scope.systemctl();
        let memory_mb = self.settings.memory_mb.unwrap_or_default();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "peergrid-worker: installed the {} service",
            match scope {
                Scope::User => "user",
                Scope::System => "system",
            }
        );
        let _ = writeln!(
            out,
            "  unit    {}",
            on_disk(self.root.as_deref(), &self.layout.unit).display()
        );
        let _ = writeln!(
            out,
            "  config  {}",
            on_disk(self.root.as_deref(), &self.layout.config).display()
        );
        let data_dir = self
            .settings
            .data_dir
            .as_deref()
            .unwrap_or(&self.layout.data_dir);
        let _ = match scope {
            Scope::User => writeln!(
                out,
                "  data    {} (mode 0700: the worker's key, blobs and credit ledger)",
                on_disk(self.root.as_deref(), data_dir).display()
            ),
            Scope::System => writeln!(
                out,
                "  data    {} (made by systemd at first start, mode 0700, owned by the service's own user)",
                data_dir.display()
            ),
        };
        let _ = writeln!(
            out,
            "  memory  MemoryMax={}M: {memory_mb} MiB for tasks (memory-mb) and {} MiB for the worker itself",
            self.memory_max_bytes / MIB,
            (self.memory_max_bytes / MIB).saturating_sub(memory_mb)
        );
        if let Some(root) = &self.root {
            let _ = writeln!(
                out,
                "Written under {}; on the system it is installed on, run:",
                root.display()
            );
        } else {
            let _ = writeln!(out, "Next:");
        }
        let _ = writeln!(out, "  {systemctl} daemon-reload");
        if self.replaced {
            let _ = writeln!(
                out,
                "  {systemctl} restart peergrid-worker   # if it is running, to apply the new files"
            );
        }
        let _ = writeln!(out, "  {systemctl} enable --now peergrid-worker");
        if scope == Scope::User {
            let _ = writeln!(
                out,
                "  loginctl enable-linger \"$USER\"   # to start it at boot and keep it running after you log out"
            );
        }
        let _ = writeln!(
            out,
            "  {} -u peergrid-worker -f   # its log: the ready line, then what it does",
            scope.journalctl()
        );
        out
    }
}

/// What [`uninstall`] did.
#[derive(Debug, Clone)]
pub struct Uninstalled {
    pub layout: Layout,
    pub root: Option<PathBuf>,
    /// The files removed (on disk), unit first.
    pub removed: Vec<PathBuf>,
    /// The data directory (on disk), whether there was one (a service that never started has
    /// none), and whether it was purged.
    pub data_dir: PathBuf,
    pub data_dir_existed: bool,
    pub purged: bool,
}

impl Uninstalled {
    /// What `uninstall` prints.
    pub fn report(&self) -> String {
        let systemctl = self.layout.scope.systemctl();
        let mut out = String::from("peergrid-worker: uninstalled the service\n");
        for path in &self.removed {
            let _ = writeln!(out, "  removed {}", path.display());
        }
        if !self.data_dir_existed {
            let _ = writeln!(
                out,
                "  no data directory at {} (the service never started)",
                self.data_dir.display()
            );
        } else if self.purged {
            let _ = writeln!(
                out,
                "  purged  {} (the worker's key and credit ledger are gone)",
                self.data_dir.display()
            );
        } else {
            let _ = writeln!(
                out,
                "  kept    {} (the worker's key and credit ledger; `uninstall {} --purge` deletes it)",
                self.data_dir.display(),
                self.layout.scope.flag()
            );
        }
        let _ = writeln!(out, "Next:");
        let _ = writeln!(
            out,
            "  {systemctl} stop peergrid-worker   # if it is still running"
        );
        let _ = writeln!(out, "  {systemctl} daemon-reload");
        out
    }
}

/// Why `install` or `uninstall` refused or failed. Each names the flag or the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    #[error(
        "HOME is not set to an absolute path: a --user install goes under it (or set XDG_CONFIG_HOME and XDG_DATA_HOME)"
    )]
    NoHome,
    #[error("refused, nothing written: {0}")]
    Settings(#[from] ConfigError),
    #[error(
        "refused, nothing written: {flag} is a testing aid and is not installed as a service (remove it from the flags or the --config file)"
    )]
    TestingAid { flag: &'static str },
    #[error(
        "refused, nothing written: --data-dir does not go with --system, whose data directory is /var/lib/{SYSTEM_STATE_DIR} (systemd's StateDirectory=, owned by the service's own user)"
    )]
    DataDirWithSystem,
    #[error("refused, nothing written: the worker binary {path}: {reason}")]
    Executable { path: PathBuf, reason: String },
    #[error(
        "refused, nothing written: {what} {path} is under {dir}, which the service's sandbox replaces with an empty one of its own (PrivateTmp=): choose another place (HOME, XDG_CONFIG_HOME, XDG_DATA_HOME or --data-dir)"
    )]
    Hidden {
        what: &'static str,
        path: PathBuf,
        dir: &'static str,
    },
    #[error(
        "refused, nothing written: {what} {path:?} cannot be written into a unit as it is (use a path without spaces, quotes, backslashes, % or $)"
    )]
    UnitPath { what: &'static str, path: PathBuf },
    #[error(
        "refused, nothing written: {path} already exists: give --force to replace it, or `peergrid-worker uninstall {flag}` first"
    )]
    Exists { path: PathBuf, flag: &'static str },
    #[error("cannot write {path}: {source}{hint}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error(
        "not installed: neither {unit} nor {config} exists (a {flag} install with these HOME/XDG directories writes them)"
    )]
    NotInstalled {
        unit: PathBuf,
        config: PathBuf,
        flag: &'static str,
    },
    #[error(
        "refused, nothing removed: {path} was not written by `peergrid-worker install` (it does not begin with its mark); remove it by hand if it is not needed"
    )]
    NotOurs { path: PathBuf },
    #[error(
        "refused, nothing removed: --purge deletes the data directory {config} names, and it cannot be read ({reason}); fix it, or uninstall without --purge and delete the data directory by hand"
    )]
    PurgeUnknown { config: PathBuf, reason: String },
    #[error(
        "refused, nothing removed: the service is enabled ({link} exists): run `{systemctl} disable --now peergrid-worker` first"
    )]
    Enabled {
        link: PathBuf,
        systemctl: &'static str,
    },
    #[error(
        "not purged: {path} {reason}; it was kept (delete it by hand if it is really the worker's)"
    )]
    PurgeRefused { path: PathBuf, reason: &'static str },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `MemoryMax=` for a worker lending `task_memory_bytes` to tasks on `cores` cores: the tasks'
/// cap, plus the worker's own [`limits::SERVICE_MEMORY_HEADROOM_BYTES`], plus what each running
/// task holds outside its linear memory ([`limits::SERVICE_MEMORY_PER_CORE_BYTES`]), in whole
/// MiB.
pub fn memory_max_bytes(task_memory_bytes: u64, cores: u32) -> u64 {
    let bytes = task_memory_bytes
        .saturating_add(limits::SERVICE_MEMORY_HEADROOM_BYTES)
        .saturating_add(u64::from(cores).saturating_mul(limits::SERVICE_MEMORY_PER_CORE_BYTES));
    bytes.div_ceil(MIB).saturating_mul(MIB)
}

/// What a unit is made of.
#[derive(Debug, Clone)]
pub struct UnitSpec<'a> {
    pub scope: Scope,
    pub executable: &'a Path,
    pub config: &'a Path,
    /// Made writable in the sandbox (a user unit; the system unit's is its `StateDirectory=`).
    pub data_dir: &'a Path,
    pub memory_max_bytes: u64,
}

/// The unit file. Only settings valid for the scope are written (ARCHITECTURE.md, "Service
/// install"): a user manager has no capabilities to drop, no dynamic users, and cannot hide
/// `/proc` or the cgroup tree.
///
/// # Errors
/// [`InstallError::UnitPath`] if a path is not UTF-8, not absolute, or holds a character that
/// systemd would read as something else (whitespace, quotes, `\`, `%` specifiers, `$`
/// variables); refusing is simpler and safer than quoting.
pub fn render_unit(spec: &UnitSpec<'_>) -> Result<String, InstallError> {
    let executable = unit_word("the worker binary", spec.executable)?;
    let config = unit_word("the config file", spec.config)?;
    let data_dir = unit_word("the data directory", spec.data_dir)?;
    let scope = spec.scope;
    let flag = scope.flag();
    let system = scope == Scope::System;
    let mut unit = String::new();
    let mut line = |text: &str| {
        unit.push_str(text);
        unit.push('\n');
    };
    line(&format!(
        "{MARKER} {flag}`; `peergrid-worker uninstall {flag}` removes it."
    ));
    line(&format!(
        "# The worker's settings are in {config}; MemoryMax= follows its memory-mb and cores."
    ));
    line("[Unit]");
    line("Description=peergrid worker: lends this machine's spare CPU to a peergrid");
    if system {
        // The user manager has no network-online.target; a user worker that starts before the
        // network fails to bind and is restarted.
        line("Wants=network-online.target");
        line("After=network-online.target");
    }
    line("");
    line("[Service]");
    line("Type=exec");
    line(&format!("ExecStart={executable} --config {config}"));
    line("Restart=on-failure");
    line("RestartSec=10s");
    // The journal keeps plain text (tracing's colours otherwise).
    line("Environment=NO_COLOR=1");
    line("");
    line("# The owner first: CPU and disk only when nothing else wants them, memory capped at the");
    line(
        "# tasks' memory-mb plus the worker's own headroom, and the first to go if memory runs out.",
    );
    line("Nice=19");
    line("CPUSchedulingPolicy=idle");
    line("IOSchedulingClass=idle");
    line(&format!(
        "MemoryMax={}M",
        spec.memory_max_bytes.div_ceil(MIB)
    ));
    line("OOMScoreAdjust=500");
    line("");
    line("# A sandbox of its own: the worker reads the system and writes only its data directory.");
    if system {
        line("DynamicUser=yes");
        line(&format!("StateDirectory={SYSTEM_STATE_DIR}"));
        line("StateDirectoryMode=0700");
        line("CapabilityBoundingSet=");
    }
    line("UMask=0077");
    line("NoNewPrivileges=yes");
    line("ProtectSystem=strict");
    if system {
        line("ProtectHome=yes");
    } else {
        // The binary may be under the home directory (~/.cargo/bin), and so are the config
        // and the data directory: read-only, with the data directory writable.
        line("ProtectHome=read-only");
        line(&format!("ReadWritePaths={data_dir}"));
    }
    line("PrivateTmp=yes");
    line("PrivateDevices=yes");
    line("ProtectKernelTunables=yes");
    line("ProtectKernelModules=yes");
    line("ProtectKernelLogs=yes");
    if system {
        line("ProtectControlGroups=yes");
        line("ProtectProc=invisible");
    }
    line("ProtectClock=yes");
    line("ProtectHostname=yes");
    // UDP and TCP, and netlink: the QUIC endpoint reads and watches the machine's addresses and
    // routes (rtnetlink). No AF_UNIX: the worker makes no local socket, and read-only paths do
    // not stop one from reaching a local daemon (D-Bus, a container engine's socket).
    line("RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK");
    line("RestrictNamespaces=yes");
    line("RestrictRealtime=yes");
    line("RestrictSUIDSGID=yes");
    line("LockPersonality=yes");
    line("SystemCallArchitectures=native");
    line("");
    line("[Install]");
    line(&format!("WantedBy={}", scope.wanted_by()));
    Ok(unit)
}

/// The config file: a header, then the settings as the worker reads them (`--config`).
pub fn render_config(scope: Scope, settings: &Settings, config: &Path) -> String {
    let flag = scope.flag();
    let systemctl = scope.systemctl();
    let body = toml::to_string(settings).expect("every setting has a TOML form");
    format!(
        "{MARKER} {flag}`: the worker's settings, which its service runs with
# (`peergrid-worker --config {config}`). The keys are the worker's flags (`peergrid-worker
# --help`, worker/peergrid-worker.example.toml). After editing: `{systemctl} restart
# peergrid-worker`. The unit's MemoryMax= follows memory-mb and cores: to change those, install
# again from this file: `peergrid-worker install {flag} --force --config {config} --memory-mb N`.

{body}",
        config = config.display()
    )
}

/// Installs the service: checks everything, then writes the data directory (user), the config
/// file and the unit, in that order. Nothing is written if a check fails; a write that fails
/// removes the files this call had created.
///
/// # Errors
/// Refusals before writing (bad or testing-aid settings, an executable the sandbox would hide,
/// a path a unit cannot hold, an existing file without `--force`), and write failures, each
/// naming the flag or the file.
pub fn install(request: &InstallRequest, dirs: &UserDirs) -> Result<Installed, InstallError> {
    let layout = Layout::new(request.scope, dirs)?;
    let settings = service_settings(request.scope, &layout, request.settings.clone())?;
    check_executable(request.scope, &request.executable)?;
    let data_dir = settings.data_dir.clone().expect("service_settings sets it");
    outside_private_tmp("the config file", &layout.config)?;
    outside_private_tmp("the data directory", &data_dir)?;
    let memory_max = memory_max_bytes(
        settings
            .memory_mb
            .expect("service_settings sets it")
            .saturating_mul(MIB),
        settings.cores.expect("service_settings sets it"),
    );
    let unit_text = render_unit(&UnitSpec {
        scope: request.scope,
        executable: &request.executable,
        config: &layout.config,
        data_dir: &data_dir,
        memory_max_bytes: memory_max,
    })?;
    let config_text = render_config(request.scope, &settings, &layout.config);
    debug_assert_eq!(
        toml::from_str::<Settings>(&config_text).ok().as_ref(),
        Some(&settings),
        "the config file reads back as written"
    );

    let root = request.root.as_deref();
    let unit_path = on_disk(root, &layout.unit);
    let config_path = on_disk(root, &layout.config);
    let existing: Vec<&PathBuf> = [&config_path, &unit_path]
        .into_iter()
        .filter(|path| path.symlink_metadata().is_ok())
        .collect();
    if let Some(path) = existing.first().filter(|_| !request.force) {
        return Err(InstallError::Exists {
            path: (*path).clone(),
            flag: request.scope.flag(),
        });
    }
    let replaced = !existing.is_empty();

    let hint = write_hint(request.scope, root);
    if request.scope == Scope::User {
        make_data_dir(&on_disk(root, &data_dir), hint)?;
    }
    let config_was_new = config_path.symlink_metadata().is_err();
    write_file(&config_path, &config_text, hint)?;
    if let Err(error) = write_file(&unit_path, &unit_text, hint) {
        if config_was_new {
            let _ = std::fs::remove_file(&config_path);
        }
        return Err(error);
    }
    Ok(Installed {
        layout,
        root: request.root.clone(),
        settings,
        memory_max_bytes: memory_max,
        replaced,
    })
}

/// Uninstalls the service: removes the unit, then the config file, and the data directory too
/// if `purge`. Refuses while the service is enabled, and leaves alone a file that
/// `peergrid-worker install` did not write.
///
/// # Errors
/// [`InstallError::NotInstalled`] when neither file exists; the refusals above; a file that
/// cannot be removed; a data directory that does not look like a worker's (`purge`).
pub fn uninstall(
    scope: Scope,
    root: Option<&Path>,
    purge: bool,
    dirs: &UserDirs,
) -> Result<Uninstalled, InstallError> {
    let layout = Layout::new(scope, dirs)?;
    let unit_path = on_disk(root, &layout.unit);
    let config_path = on_disk(root, &layout.config);
    let present: Vec<PathBuf> = [&unit_path, &config_path]
        .into_iter()
        .filter(|path| path.symlink_metadata().is_ok())
        .cloned()
        .collect();
    if present.is_empty() {
        return Err(InstallError::NotInstalled {
            unit: unit_path,
            config: config_path,
            flag: scope.flag(),
        });
    }
    let link = on_disk(root, &layout.enabled_link);
    if link.symlink_metadata().is_ok() {
        return Err(InstallError::Enabled {
            link,
            systemctl: scope.systemctl(),
        });
    }
    for path in &present {
        let ours = std::fs::read_to_string(path).is_ok_and(|text| text.starts_with(MARKER));
        if !ours {
            return Err(InstallError::NotOurs { path: path.clone() });
        }
    }
    // The data directory the config names (a user may have given --data-dir), read before the
    // config goes.
    // With --purge, a config that cannot be read refuses the whole uninstall: the default
    // directory could be another worker's.
    let named = match Settings::from_file(&config_path) {
        Ok(settings) => settings.data_dir,
        Err(error) if purge && config_path.symlink_metadata().is_ok() => {
            return Err(InstallError::PurgeUnknown {
                config: config_path,
                reason: error.to_string(),
            });
        }
        Err(_) => None,
    };
    let data_dir = named.unwrap_or_else(|| layout.data_dir.clone());
    let data_dir = on_disk(root, &data_dir);
    for path in &present {
        std::fs::remove_file(path).map_err(|source| InstallError::Remove {
            path: path.clone(),
            source,
        })?;
    }
    // Its directory (`peergrid/`) goes too if nothing else is in it.
    if let Some(dir) = config_path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    let data_dir_existed = data_dir.exists();
    if purge {
        purge_data_dir(scope, root, &data_dir)?;
    }
    Ok(Uninstalled {
        layout,
        root: root.map(Path::to_owned),
        removed: present,
        data_dir,
        data_dir_existed,
        purged: purge,
    })
}

/// The settings a service runs with: the donor's, checked by the worker's own resolution, with
/// the data directory, cores and memory written out, so that the unit's `MemoryMax=` and the
/// worker's cap come from the same numbers (a default of half the RAM would otherwise be worked
/// out again at every start).
fn service_settings(
    scope: Scope,
    layout: &Layout,
    mut settings: Settings,
) -> Result<Settings, InstallError> {
    let aids = [
        ("--lie-rate", settings.lie_rate.is_some()),
        ("--owner-load-file", settings.owner_load_file.is_some()),
        ("--fingerprint-tag", settings.fingerprint_tag.is_some()),
    ];
    if let Some((flag, _)) = aids.into_iter().find(|(_, given)| *given) {
        return Err(InstallError::TestingAid { flag });
    }
    settings.data_dir = match (scope, settings.data_dir.take()) {
        // Its own config file, given back with --config to install again, names it.
        (Scope::System, Some(dir)) if dir == layout.data_dir => Some(dir),
        (Scope::System, Some(_)) => return Err(InstallError::DataDirWithSystem),
        (Scope::User, Some(dir)) => {
            Some(
                std::path::absolute(&dir).map_err(|source| InstallError::Write {
                    path: dir,
                    source,
                    hint: "",
                })?,
            )
        }
        (_, None) => Some(layout.data_dir.clone()),
    };
    let options = settings.clone().resolve()?;
    settings.cores = Some(options.policy.cores);
    settings.memory_mb = Some((options.policy.memory_bytes / MIB).max(1));
    Ok(settings)
}

/// The binary must be where the service can run it: absolute, executable, and not somewhere the
/// sandbox hides (`PrivateTmp=`; for the machine's service, `ProtectHome=yes` and a user
/// without a home).
fn check_executable(scope: Scope, path: &Path) -> Result<(), InstallError> {
    let refuse = |reason: String| InstallError::Executable {
        path: path.to_owned(),
        reason,
    };
    if !path.is_absolute() {
        return Err(refuse("not an absolute path".into()));
    }
    let metadata = std::fs::metadata(path).map_err(|error| refuse(error.to_string()))?;
    let mode = metadata.permissions().mode();
    if !metadata.is_file() || mode & 0o111 == 0 {
        return Err(refuse("not an executable file".into()));
    }
    let mut hidden = PRIVATE_TMP.to_vec();
    if scope == Scope::System {
        hidden.extend(["/home", "/root", "/run/user"]);
    }
    if let Some(dir) = hidden.iter().find(|dir| path.starts_with(dir)) {
        return Err(refuse(format!(
            "the service's sandbox hides {dir}: copy the binary to /usr/local/bin (e.g. `sudo install -m 0755 {} /usr/local/bin/`) and run the install from there",
            path.display()
        )));
    }
    if scope == Scope::System && mode & 0o001 == 0 {
        return Err(refuse(
            "not executable by other users, as the service's own user is (chmod o+rx)".into(),
        ));
    }
    Ok(())
}

/// The directories `PrivateTmp=` replaces with the service's own, empty at every start.
const PRIVATE_TMP: [&str; 2] = ["/tmp", "/var/tmp"];

/// A file the service reads or writes must not be where its sandbox shows an empty directory (a
/// data directory there would lose the worker's key at every start).
fn outside_private_tmp(what: &'static str, path: &Path) -> Result<(), InstallError> {
    match PRIVATE_TMP.into_iter().find(|dir| path.starts_with(dir)) {
        Some(dir) => Err(InstallError::Hidden {
            what,
            path: path.to_owned(),
            dir,
        }),
        None => Ok(()),
    }
}

/// `path` as one word of a unit file.
fn unit_word<'a>(what: &'static str, path: &'a Path) -> Result<&'a str, InstallError> {
    let refuse = || InstallError::UnitPath {
        what,
        path: path.to_owned(),
    };
    let text = path.to_str().ok_or_else(refuse)?;
    let plain = path.is_absolute()
        && text
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !"\"'\\%$;".contains(c));
    if plain { Ok(text) } else { Err(refuse()) }
}

/// `path` under `root`, if given.
fn on_disk(root: Option<&Path>, path: &Path) -> PathBuf {
    match root {
        Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_owned(),
    }
}

/// What to add to a permission error.
fn write_hint(scope: Scope, root: Option<&Path>) -> &'static str {
    match (scope, root) {
        (Scope::System, None) => {
            " (a --system install writes to /etc: run it as root, e.g. with sudo)"
        }
        _ => "",
    }
}

/// Creates the data directory if needed and makes it private (0700), as the key in it must be.
fn make_data_dir(path: &Path, hint: &'static str) -> Result<(), InstallError> {
    let error = |source| InstallError::Write {
        path: path.to_owned(),
        source,
        hint,
    };
    std::fs::create_dir_all(path).map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(DATA_DIR_MODE)).map_err(error)
}

/// Writes `text` to `path` atomically (a temporary file renamed over it), mode 0644: the system
/// service's own user must read both files, and neither holds a secret.
fn write_file(path: &Path, text: &str, hint: &'static str) -> Result<(), InstallError> {
    let error = |source| InstallError::Write {
        path: path.to_owned(),
        source,
        hint,
    };
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(error)?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(error)?;
    file.write_all(text.as_bytes()).map_err(error)?;
    file.as_file().sync_all().map_err(error)?;
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).map_err(error)?;
    file.persist(path).map_err(|persist| error(persist.error))?;
    Ok(())
}

/// Deletes the data directory, if it is a worker's: it holds the worker's key, or nothing.
/// The system service's data lives in `/var/lib/private/peergrid-worker` behind a link
/// (`DynamicUser=`); both go.
fn purge_data_dir(scope: Scope, root: Option<&Path>, path: &Path) -> Result<(), InstallError> {
    let mut dirs = vec![path.to_owned()];
    if scope == Scope::System {
        dirs.push(on_disk(
            root,
            &Path::new("/var/lib/private").join(SYSTEM_STATE_DIR),
        ));
    }
    for dir in &dirs {
        let Ok(metadata) = dir.symlink_metadata() else {
            continue;
        };
        let remove = |result: std::io::Result<()>| {
            result.map_err(|source| InstallError::Remove {
                path: dir.clone(),
                source,
            })
        };
        if metadata.file_type().is_symlink() {
            remove(std::fs::remove_file(dir))?;
            continue;
        }
        let empty = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none());
        if !empty && !dir.join("identity.key").is_file() {
            return Err(InstallError::PurgeRefused {
                path: dir.clone(),
                reason: "holds files but no worker key (identity.key)",
            });
        }
        remove(std::fs::remove_dir_all(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The donor's home as the installed system sees it; the tests write under a root.
    const HOME: &str = "/home/donor";

    fn donor() -> UserDirs {
        UserDirs {
            home: Some(HOME.into()),
            config_home: None,
            data_home: None,
        }
    }

    /// A request with a donor's typical flags, written under `root`.
    fn request(scope: Scope, root: &Path) -> InstallRequest {
        InstallRequest {
            scope,
            settings: Settings {
                cores: Some(2),
                memory_mb: Some(2048),
                idle_only: Some(true),
                busy_threshold: Some(30.0),
                trust: Some(vec![submitter_key()]),
                ..Settings::default()
            },
            // Any real executable outside the directories the sandbox hides.
            executable: PathBuf::from("/bin/sh"),
            root: Some(root.to_owned()),
            force: false,
        }
    }

    /// A submitter's public key, in hex.
    fn submitter_key() -> String {
        peergrid_proto::Identity::from_seed([7; 32])
            .public_key()
            .to_hex()
    }

    /// `path` of the installed system, under `root`.
    fn at(root: &Path, path: &str) -> PathBuf {
        on_disk(Some(root), Path::new(path))
    }

    /// The unit's settings, without comments and blank lines.
    fn unit_lines(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .collect()
    }

    #[test]
    fn the_user_unit_runs_this_binary_with_its_config_in_a_sandbox_with_the_donors_memory_cap() {
        let root = tempfile::tempdir().unwrap();
        let installed = install(&request(Scope::User, root.path()), &donor()).unwrap();
        let unit = std::fs::read_to_string(at(
            root.path(),
            "/home/donor/.config/systemd/user/peergrid-worker.service",
        ))
        .unwrap();
        let lines = unit_lines(&unit);
        // 2048 MiB for tasks + 256 MiB for the worker + 2 cores × 64 MiB.
        assert_eq!(installed.memory_max_bytes, 2432 * MIB);
        for expected in [
            "ExecStart=/bin/sh --config /home/donor/.config/peergrid/worker.toml",
            "Restart=on-failure",
            "MemoryMax=2432M",
            "Nice=19",
            "CPUSchedulingPolicy=idle",
            "IOSchedulingClass=idle",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "ReadWritePaths=/home/donor/.local/share/peergrid/worker",
            "PrivateTmp=yes",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK",
            "LockPersonality=yes",
            "WantedBy=default.target",
        ] {
            assert!(lines.contains(&expected), "{expected} missing from\n{unit}");
        }
        // Settings a user manager cannot apply are left out.
        for absent in [
            "DynamicUser",
            "ProtectProc",
            "ProtectControlGroups",
            "CapabilityBoundingSet",
            "network-online",
        ] {
            assert!(!unit.contains(absent), "{absent} in a user unit:\n{unit}");
        }
    }

    #[test]
    fn the_system_unit_has_its_own_user_and_state_directory_and_the_fuller_sandbox() {
        let root = tempfile::tempdir().unwrap();
        let installed =
            install(&request(Scope::System, root.path()), &UserDirs::default()).unwrap();
        let unit = std::fs::read_to_string(at(
            root.path(),
            "/etc/systemd/system/peergrid-worker.service",
        ))
        .unwrap();
        let lines = unit_lines(&unit);
        for expected in [
            "ExecStart=/bin/sh --config /etc/peergrid/worker.toml",
            "DynamicUser=yes",
            "StateDirectory=peergrid-worker",
            "StateDirectoryMode=0700",
            "CapabilityBoundingSet=",
            "ProtectHome=yes",
            "ProtectProc=invisible",
            "ProtectControlGroups=yes",
            "After=network-online.target",
            "MemoryMax=2432M",
            "WantedBy=multi-user.target",
        ] {
            assert!(lines.contains(&expected), "{expected} missing from\n{unit}");
        }
        assert!(!unit.contains("ReadWritePaths"), "{unit}");
        let config = Settings::from_file(&at(root.path(), "/etc/peergrid/worker.toml")).unwrap();
        assert_eq!(
            config.data_dir.as_deref(),
            Some(Path::new("/var/lib/peergrid-worker")),
            "paths inside the files are the installed system's, not the root's"
        );
        assert_eq!(installed.settings, config);
        assert!(
            !at(root.path(), "/var/lib/peergrid-worker").exists(),
            "systemd makes the state directory, owned by the service's user"
        );
    }

    #[test]
    fn installing_again_from_the_installed_config_changes_only_what_is_given() {
        // What the config file's header tells a donor to do to change memory-mb.
        let root = tempfile::tempdir().unwrap();
        install(&request(Scope::System, root.path()), &UserDirs::default()).unwrap();
        let config = at(root.path(), "/etc/peergrid/worker.toml");
        let flags = Settings {
            memory_mb: Some(4096),
            ..Settings::default()
        };
        let again = InstallRequest {
            settings: flags.over(Settings::from_file(&config).unwrap()),
            force: true,
            ..request(Scope::System, root.path())
        };
        let installed = install(&again, &UserDirs::default()).unwrap();
        assert_eq!(installed.memory_max_bytes, (4096 + 256 + 2 * 64) * MIB);
        let read = Settings::from_file(&config).unwrap();
        assert_eq!(
            (read.memory_mb, read.cores, read.idle_only),
            (Some(4096), Some(2), Some(true))
        );
    }

    #[test]
    fn the_config_holds_the_donors_flags_and_resolves_to_the_same_worker() {
        let root = tempfile::tempdir().unwrap();
        let mut request = request(Scope::User, root.path());
        request.settings.seeds = Some(vec![format!("{}@192.0.2.1:7070", submitter_key())]);
        let installed = install(&request, &donor()).unwrap();
        let path = at(root.path(), "/home/donor/.config/peergrid/worker.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(MARKER), "{text}");
        for key in [
            "cores = 2",
            "memory-mb = 2048",
            "idle-only = true",
            "busy-threshold = 30",
        ] {
            assert!(text.contains(key), "{key} missing from\n{text}");
        }
        let read = Settings::from_file(&path).unwrap();
        assert_eq!(read, installed.settings);
        let options = read.resolve().unwrap();
        assert_eq!(options.policy.cores, 2);
        assert_eq!(options.policy.memory_bytes, 2048 * MIB);
        assert!(options.policy.idle_only);
        assert_eq!(options.seeds.len(), 1);
        assert_eq!(
            options.data_dir,
            Path::new("/home/donor/.local/share/peergrid/worker")
        );
    }

    #[test]
    fn without_memory_and_cores_flags_the_defaults_are_written_so_memory_max_matches_them() {
        let root = tempfile::tempdir().unwrap();
        let mut request = request(Scope::User, root.path());
        request.settings.cores = None;
        request.settings.memory_mb = None;
        let installed = install(&request, &donor()).unwrap();
        let cores = crate::policy::DonorPolicy::default_cores();
        let memory_mb = crate::policy::DonorPolicy::default_memory_bytes() / MIB;
        assert_eq!(installed.settings.cores, Some(cores));
        assert_eq!(installed.settings.memory_mb, Some(memory_mb));
        assert_eq!(
            installed.memory_max_bytes,
            memory_max_bytes(memory_mb * MIB, cores)
        );
    }

    #[test]
    fn the_data_directory_is_private_even_if_it_existed_before() {
        let root = tempfile::tempdir().unwrap();
        let data = at(root.path(), "/home/donor/.local/share/peergrid/worker");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        install(&request(Scope::User, root.path()), &donor()).unwrap();
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn xdg_directories_are_honoured() {
        let root = tempfile::tempdir().unwrap();
        let dirs = UserDirs {
            home: Some(HOME.into()),
            config_home: Some("/srv/config".into()),
            data_home: Some("/srv/data".into()),
        };
        install(&request(Scope::User, root.path()), &dirs).unwrap();
        assert!(
            at(
                root.path(),
                "/srv/config/systemd/user/peergrid-worker.service"
            )
            .is_file()
        );
        assert!(at(root.path(), "/srv/config/peergrid/worker.toml").is_file());
        assert!(at(root.path(), "/srv/data/peergrid/worker").is_dir());
        assert!(!at(root.path(), HOME).exists());
    }

    #[test]
    fn an_existing_install_is_not_overwritten_without_force() {
        let root = tempfile::tempdir().unwrap();
        install(&request(Scope::User, root.path()), &donor()).unwrap();
        let unit = at(
            root.path(),
            "/home/donor/.config/systemd/user/peergrid-worker.service",
        );
        std::fs::write(&unit, "# the donor's own edit\n").unwrap();

        let mut again = request(Scope::User, root.path());
        again.settings.cores = Some(1);
        let error = install(&again, &donor()).unwrap_err().to_string();
        assert!(
            error.contains("--force") && error.contains("already exists"),
            "{error}"
        );
        assert_eq!(
            std::fs::read_to_string(&unit).unwrap(),
            "# the donor's own edit\n",
            "nothing was written"
        );

        again.force = true;
        let installed = install(&again, &donor()).unwrap();
        assert!(installed.replaced);
        assert!(installed.report().contains("restart peergrid-worker"));
        assert!(
            std::fs::read_to_string(&unit)
                .unwrap()
                .contains("MemoryMax=2368M")
        );
    }

    #[test]
    fn bad_flags_are_refused_before_anything_is_written() {
        let root = tempfile::tempdir().unwrap();
        let cases: Vec<(fn(&mut InstallRequest), &str)> = vec![
            (|r| r.settings.cores = Some(0), "cores = 0 is out of range"),
            (
                |r| r.settings.trust = Some(vec!["not-a-key".into()]),
                "trust key \"not-a-key\"",
            ),
            (
                |r| r.settings.seeds = Some(vec!["127.0.0.1:7946".into()]),
                "KEY@IP:PORT",
            ),
            (
                |r| r.settings.lie_rate = Some(0.5),
                "--lie-rate is a testing aid",
            ),
            (
                |r| r.executable = PathBuf::from("/usr/lib/no-such-worker"),
                "worker binary /usr/lib/no-such-worker",
            ),
            (
                |r| r.settings.data_dir = Some("/srv/peer grid".into()),
                "cannot be written into a unit",
            ),
            (
                |r| r.settings.data_dir = Some("/var/tmp/peergrid".into()),
                "PrivateTmp=",
            ),
        ];
        for (change, expected) in cases {
            let mut request = request(Scope::User, root.path());
            change(&mut request);
            let error = install(&request, &donor()).unwrap_err().to_string();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
            assert!(
                std::fs::read_dir(root.path()).unwrap().next().is_none(),
                "written before {error:?}"
            );
        }
        let mut system = request(Scope::System, root.path());
        system.settings.data_dir = Some("/srv/peergrid".into());
        let error = install(&system, &donor()).unwrap_err().to_string();
        assert!(
            error.contains("--data-dir does not go with --system"),
            "{error}"
        );
        assert!(std::fs::read_dir(root.path()).unwrap().next().is_none());
    }

    #[test]
    fn purge_with_a_config_it_cannot_read_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = Some(dir.path());
        install(&request(Scope::User, root.unwrap()), &donor()).unwrap();
        let config = at(root.unwrap(), "/home/donor/.config/peergrid/worker.toml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str("\nnot toml at all [[[\n");
        std::fs::write(&config, text).unwrap();
        let data = at(root.unwrap(), "/home/donor/.local/share/peergrid/worker");
        std::fs::write(data.join("identity.key"), "key").unwrap();

        let error = uninstall(Scope::User, root, true, &donor())
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot be read"), "{error}");
        assert!(config.is_file(), "nothing removed");
        assert!(data.join("identity.key").is_file(), "the key is kept");
    }

    #[test]
    fn uninstall_reverses_install_and_keeps_the_key_unless_purged() {
        let dir = tempfile::tempdir().unwrap();
        let root = Some(dir.path());
        let request = request(Scope::User, root.unwrap());
        install(&request, &donor()).unwrap();
        let data = at(root.unwrap(), "/home/donor/.local/share/peergrid/worker");
        std::fs::write(data.join("identity.key"), "key").unwrap();

        let done = uninstall(Scope::User, root, false, &donor()).unwrap();
        assert_eq!(done.removed.len(), 2);
        assert!(
            !at(
                root.unwrap(),
                "/home/donor/.config/systemd/user/peergrid-worker.service"
            )
            .exists()
        );
        assert!(
            !at(root.unwrap(), "/home/donor/.config/peergrid").exists(),
            "the config and its emptied directory are gone"
        );
        assert!(data.join("identity.key").is_file(), "the key is kept");
        assert!(done.report().contains("kept"), "{}", done.report());

        let error = uninstall(Scope::User, root, false, &donor())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("not installed"), "{error}");

        install(&request, &donor()).unwrap();
        let done = uninstall(Scope::User, root, true, &donor()).unwrap();
        assert!(done.purged);
        assert!(!data.exists());
    }

    #[test]
    fn uninstall_refuses_an_enabled_service_and_files_it_did_not_write() {
        let root = tempfile::tempdir().unwrap();
        install(&request(Scope::User, root.path()), &donor()).unwrap();
        let units = at(root.path(), "/home/donor/.config/systemd/user");
        let wants = units.join("default.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::os::unix::fs::symlink(units.join(UNIT_NAME), wants.join(UNIT_NAME)).unwrap();
        let error = uninstall(Scope::User, Some(root.path()), false, &donor())
            .unwrap_err()
            .to_string();
        assert!(error.contains("systemctl --user disable --now"), "{error}");
        assert!(units.join(UNIT_NAME).is_file(), "nothing removed");

        std::fs::remove_file(wants.join(UNIT_NAME)).unwrap();
        std::fs::write(units.join(UNIT_NAME), "[Service]\nExecStart=/bin/true\n").unwrap();
        let error = uninstall(Scope::User, Some(root.path()), false, &donor())
            .unwrap_err()
            .to_string();
        assert!(error.contains("was not written by"), "{error}");
        assert!(at(root.path(), "/home/donor/.config/peergrid/worker.toml").is_file());
    }

    #[test]
    fn purge_leaves_a_directory_that_is_not_a_workers() {
        let root = tempfile::tempdir().unwrap();
        let mut request = request(Scope::User, root.path());
        request.settings.data_dir = Some("/home/donor/thesis".into());
        install(&request, &donor()).unwrap();
        let chosen = at(root.path(), "/home/donor/thesis");
        std::fs::write(chosen.join("thesis.tex"), "years of work").unwrap();
        let error = uninstall(Scope::User, Some(root.path()), true, &donor())
            .unwrap_err()
            .to_string();
        assert!(error.contains("no worker key"), "{error}");
        assert!(chosen.join("thesis.tex").is_file());
    }

    #[test]
    fn memory_max_adds_the_workers_headroom_in_whole_mib() {
        assert_eq!(memory_max_bytes(1024 * MIB, 1), (1024 + 256 + 64) * MIB);
        assert_eq!(memory_max_bytes(1, 1), (1 + 256 + 64) * MIB);
        assert_eq!(memory_max_bytes(u64::MAX, 1024), u64::MAX, "saturates");
    }

    #[test]
    fn a_binary_the_sandbox_would_hide_is_refused() {
        let binary = tempfile::Builder::new().tempfile_in("/tmp").unwrap();
        std::fs::set_permissions(binary.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let error = check_executable(Scope::User, binary.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("sandbox hides /tmp"), "{error}");
        assert!(check_executable(Scope::User, Path::new("/bin/sh")).is_ok());
    }
}
