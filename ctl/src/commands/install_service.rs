//! `dwbase deploy install-service`: writes the supervisor's service unit for this machine —
//! a systemd unit (system-wide or `--user`) or a launchd agent — from the files shipped in
//! `deploy/systemd/` and `deploy/launchd/` (built in with `include_str!`), with the real paths
//! filled in: the `dwbase-supervisor` installed next to this `dwbase` (else this program's
//! `supervisor run`), the state root, and the user it runs as. It then prints the commands
//! that enable the service, and runs them only with `--enable`.
//!
//! Where units go: `~/.config/systemd/user/` (`$XDG_CONFIG_HOME`) for `--user`,
//! `/etc/systemd/system/` otherwise, `~/Library/LaunchAgents/` for launchd, or `--out DIR`.
//! An existing unit with other content is replaced only with `--force`; the same content is
//! left alone.
//!
//! The edits are exact-line (systemd) or exact-text (launchd) replacements: each must find its
//! anchor once, so a change of the shipped file that an edit no longer fits fails the unit
//! tests instead of writing a half-edited unit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::Usage;

const SYSTEMD_SYSTEM: &str = include_str!("../../../deploy/systemd/dwbase-supervisor.service");
const SYSTEMD_USER: &str = include_str!("../../../deploy/systemd/user/dwbase-supervisor.service");
const LAUNCHD_AGENT: &str = include_str!("../../../deploy/launchd/io.dwbase.supervisor.plist");

/// The systemd unit's name.
pub const UNIT_NAME: &str = "dwbase-supervisor";
/// The launchd agent's label.
pub const LAUNCHD_LABEL: &str = "io.dwbase.supervisor";
/// The user the system-wide unit runs as unless told otherwise (deploy/systemd/dwbase.sysusers.conf).
pub const DEFAULT_RUN_AS: &str = "dwbase";
/// Where the installed supervisor serves its metrics unless told otherwise: the address the
/// shipped scrape config (deploy/prometheus/prometheus.yml) expects.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// `dwbase deploy install-service`
#[derive(Debug, Clone, clap::Args)]
pub struct InstallServiceArgs {
    /// Install a systemd unit (the default except on macOS).
    #[arg(long, conflicts_with = "launchd")]
    pub systemd: bool,
    /// Install a launchd agent (the default on macOS; always per user).
    #[arg(long)]
    pub launchd: bool,
    /// A per-user systemd unit (`systemctl --user`, no root needed) instead of a system-wide one.
    #[arg(long)]
    pub user: bool,
    /// State root the supervisor owns (default: /var/lib/dwbase system-wide,
    /// ~/.local/share/dwbase per user, ~/Library/Application Support/dwbase with launchd).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Write the unit into DIR instead of the standard place (nothing is enabled).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Also run the printed commands: reload the service manager and enable + start the unit.
    #[arg(long, conflicts_with = "out")]
    pub enable: bool,
    /// Replace an existing unit that has other content.
    #[arg(long)]
    pub force: bool,
    /// System-wide systemd unit only: the user the supervisor runs as (default: dwbase).
    #[arg(long, value_name = "USER", conflicts_with_all = ["user", "launchd"])]
    pub run_as: Option<String>,
    /// Where the supervisor serves its Prometheus metrics (`--metrics-addr` of `supervisor
    /// run`; loopback, as deploy/prometheus/prometheus.yml scrapes it).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Serve no metrics (the unit runs the supervisor without `--metrics-addr`).
    #[arg(long, conflicts_with = "metrics_addr")]
    pub no_metrics: bool,
}

/// Which service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    /// systemd, system-wide.
    SystemdSystem,
    /// systemd, `--user`.
    SystemdUser,
    /// launchd, a per-user agent.
    Launchd,
}

/// A program and the arguments before `--root …` (`dwbase-supervisor run` or `dwbase
/// supervisor run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervisor {
    /// Absolute path of the executable.
    pub program: PathBuf,
    /// `["run"]` or `["supervisor", "run"]`.
    pub args: Vec<String>,
}

impl Supervisor {
    /// `dwbase-supervisor` beside `exe` if it is there, else `exe supervisor run`.
    pub fn beside(exe: &Path) -> Self {
        let sibling =
            exe.with_file_name(format!("dwbase-supervisor{}", std::env::consts::EXE_SUFFIX));
        if sibling.is_file() {
            Self { program: sibling, args: vec!["run".into()] }
        } else {
            Self { program: exe.to_owned(), args: vec!["supervisor".into(), "run".into()] }
        }
    }

    /// The whole command line as words.
    fn words(&self, root: &Path, metrics: Option<SocketAddr>) -> Vec<String> {
        let mut w = vec![self.program.to_string_lossy().into_owned()];
        w.extend(self.args.iter().cloned());
        w.extend(["--root".into(), root.to_string_lossy().into_owned(), "--foreground".into()]);
        if let Some(addr) = metrics {
            w.extend(["--metrics-addr".into(), addr.to_string()]);
        }
        w
    }
}

/// Everything a unit is rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    /// Which manager.
    pub manager: Manager,
    /// The supervisor to run.
    pub supervisor: Supervisor,
    /// The state root (absolute).
    pub root: PathBuf,
    /// System-wide unit: `User=`.
    pub run_as: String,
    /// `--metrics-addr` of the supervisor, if any.
    pub metrics_addr: Option<SocketAddr>,
}

impl UnitSpec {
    /// The supervisor's command line.
    fn words(&self) -> Vec<String> {
        self.supervisor.words(&self.root, self.metrics_addr)
    }
}

/// `dwbase deploy install-service`.
pub fn run(args: InstallServiceArgs) -> Result<()> {
    let manager = if args.launchd || (!args.systemd && cfg!(target_os = "macos")) {
        Manager::Launchd
    } else if args.user {
        Manager::SystemdUser
    } else {
        Manager::SystemdSystem
    };
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    let need_home =
        || home.clone().ok_or_else(|| anyhow!("HOME is not set: pass --root and --out explicitly"));
    let root = match &args.root {
        Some(r) => std::path::absolute(r).with_context(|| format!("resolving {}", r.display()))?,
        None => match manager {
            Manager::SystemdSystem => PathBuf::from("/var/lib/dwbase"),
            Manager::SystemdUser => need_home()?.join(".local/share/dwbase"),
            Manager::Launchd => need_home()?.join("Library/Application Support/dwbase"),
        },
    };
    let exe = std::env::current_exe().context("finding this program's path")?;
    let spec = UnitSpec {
        manager,
        supervisor: Supervisor::beside(&exe),
        root,
        run_as: args.run_as.clone().unwrap_or_else(|| DEFAULT_RUN_AS.to_owned()),
        metrics_addr: (!args.no_metrics).then_some(args.metrics_addr),
    };
    if spec.run_as.is_empty() || spec.run_as.chars().any(|c| c.is_whitespace() || c == '%') {
        return Err(Usage(format!("--run-as {:?} is not a user name", spec.run_as)).into());
    }
    let text = render(&spec)?;
    let standard = match manager {
        Manager::SystemdSystem => PathBuf::from("/etc/systemd/system"),
        Manager::SystemdUser => std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .map(Ok)
            .unwrap_or_else(|| need_home().map(|h| h.join(".config")))?
            .join("systemd/user"),
        Manager::Launchd => need_home()?.join("Library/LaunchAgents"),
    };
    let dir = args.out.clone().unwrap_or_else(|| standard.clone());
    let path = dir.join(file_name(manager));
    let written = write_unit(&path, &text, args.force).map_err(|e| match e.kind {
        WriteErrorKind::PermissionDenied if manager == Manager::SystemdSystem => anyhow!(
            "{}: permission denied — run it as root (sudo), or install a per-user unit with \
             --user, or write it elsewhere with --out DIR",
            e.path.display()
        ),
        _ => anyhow::Error::new(e),
    })?;
    if args.out.is_none() && manager == Manager::SystemdSystem {
        prepare_system_root(&spec)?;
    }

    let what = match manager {
        Manager::SystemdSystem => "systemd unit, system-wide",
        Manager::SystemdUser => "systemd unit, --user",
        Manager::Launchd => "launchd agent",
    };
    let verb = if written { "wrote" } else { "unchanged (already installed)" };
    crate::outln!("{verb} {} ({what})", path.display())?;
    crate::outln!("  runs        {}", shell_words(&spec.words()))?;
    crate::outln!("  state root  {}", spec.root.display())?;
    if manager == Manager::SystemdSystem {
        crate::outln!("  as user     {}", spec.run_as)?;
    }
    for note in notes(&spec, &exe) {
        crate::outln!("  note: {note}")?;
    }
    let installed = standard.join(file_name(manager));
    let commands = enable_commands(manager, &installed);
    if args.out.is_some() {
        crate::outln!("to install it from there:")?;
        let sudo = if manager == Manager::SystemdSystem { "sudo " } else { "" };
        crate::outln!(
            "  {sudo}install -D -m 0644 {} {}",
            shell_quote(&path.to_string_lossy()),
            shell_quote(&installed.to_string_lossy())
        )?;
    }
    crate::outln!(
        "{}",
        match manager {
            Manager::Launchd => "to start it now and at every login:",
            Manager::SystemdUser => "to start it now and whenever you log in:",
            Manager::SystemdSystem => "to start it now and at every boot:",
        }
    )?;
    crate::outln!(
        "  {}",
        commands.iter().map(|c| shell_words(c)).collect::<Vec<_>>().join(" && ")
    )?;
    if manager == Manager::SystemdUser {
        crate::outln!(
            "  loginctl enable-linger \"$USER\"     # keep it running after logout, start at boot"
        )?;
    }
    let as_user = match manager {
        Manager::SystemdSystem => format!("sudo -u {} ", spec.run_as),
        _ => String::new(),
    };
    crate::outln!("then:")?;
    crate::outln!(
        "  {as_user}DWBASE_DATA_DIR={} dwbase deploy status",
        shell_quote(&spec.root.to_string_lossy())
    )?;
    if args.enable {
        for c in &commands {
            run_command(c)?;
        }
        crate::outln!("enabled and started {}", file_name(manager))?;
    }
    Ok(())
}

/// The unit's file name.
pub fn file_name(manager: Manager) -> &'static str {
    match manager {
        Manager::Launchd => "io.dwbase.supervisor.plist",
        _ => "dwbase-supervisor.service",
    }
}

/// The commands that load and start the installed unit at `installed`.
pub fn enable_commands(manager: Manager, installed: &Path) -> Vec<Vec<String>> {
    let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    match manager {
        Manager::SystemdSystem => vec![
            v(&["systemctl", "daemon-reload"]),
            v(&["systemctl", "enable", "--now", UNIT_NAME]),
        ],
        Manager::SystemdUser => vec![
            v(&["systemctl", "--user", "daemon-reload"]),
            v(&["systemctl", "--user", "enable", "--now", UNIT_NAME]),
        ],
        Manager::Launchd => {
            let uid = nix::unistd::getuid().as_raw();
            vec![vec![
                "launchctl".into(),
                "bootstrap".into(),
                format!("gui/{uid}"),
                installed.to_string_lossy().into_owned(),
            ]]
        }
    }
}

fn run_command(words: &[String]) -> Result<()> {
    let line = shell_words(words);
    eprintln!("running: {line}");
    let status = Command::new(&words[0])
        .args(&words[1..])
        .status()
        .with_context(|| format!("running {line}"))?;
    if !status.success() {
        bail!("{line} failed ({status})");
    }
    Ok(())
}

/// Things worth knowing about the paths the unit uses.
fn notes(spec: &UnitSpec, exe: &Path) -> Vec<String> {
    let mut notes = vec![];
    if spec.supervisor.program == exe {
        notes.push(format!(
            "no dwbase-supervisor beside {}: the unit runs this program's `supervisor run`",
            exe.display()
        ));
    }
    if spec.supervisor.program.components().any(|c| c.as_os_str() == "target") {
        notes.push(
            "the unit runs a binary from a cargo build folder; install the binaries (e.g. in \
             /usr/local/bin or ~/.local/bin) and run install-service from there, or the service \
             breaks with the next `cargo clean`"
                .into(),
        );
    }
    if spec.manager == Manager::SystemdSystem {
        match nix::unistd::User::from_name(&spec.run_as) {
            Ok(Some(_)) => {}
            _ => notes.push(format!(
                "user {} does not exist here; create it first (deploy/systemd/dwbase.sysusers.conf: \
                 install it in /usr/lib/sysusers.d/ and run systemd-sysusers)",
                spec.run_as
            )),
        }
        if spec.run_as == "root" || spec.run_as == "nobody" {
            notes.push(format!(
                "running as {} defeats the unit's sandboxing (systemd warns about nobody); use a \
                 dedicated user",
                spec.run_as
            ));
        }
        if spec.root.starts_with("/tmp") || spec.root.starts_with("/var/tmp") {
            notes.push(
                "the state root is under a temporary folder, which the unit's PrivateTmp=yes \
                 hides from the service; choose another --root"
                    .into(),
            );
        }
        if under_home(&spec.supervisor.program) || under_home(&spec.root) {
            notes.push(
                "a path is under /home or /root: the unit uses ProtectHome=read-only instead of yes"
                    .into(),
            );
        }
    }
    notes
}

/// The system-wide unit's root must exist before the service starts when systemd does not
/// create it (StateDirectory= only works under /var/lib): create it, 0700, owned by the user.
fn prepare_system_root(spec: &UnitSpec) -> Result<()> {
    if state_directory(&spec.root).is_some() || spec.root.exists() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&spec.root)
        .with_context(|| format!("creating the state root {}", spec.root.display()))?;
    if let Ok(Some(user)) = nix::unistd::User::from_name(&spec.run_as) {
        nix::unistd::chown(&spec.root, Some(user.uid), Some(user.gid))
            .with_context(|| format!("giving {} to {}", spec.root.display(), spec.run_as))?;
    }
    crate::outln!("created {} (0700, for {})", spec.root.display(), spec.run_as)?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteErrorKind {
    PermissionDenied,
    Differs,
    Other,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct WriteError {
    kind: WriteErrorKind,
    path: PathBuf,
    message: String,
}

/// Writes `text` to `path` (0644) unless the same text is there; `Ok(false)` = unchanged.
fn write_unit(path: &Path, text: &str, force: bool) -> Result<bool, WriteError> {
    let fail = |kind, message: String| WriteError { kind, path: path.to_owned(), message };
    let io = |action: &str, e: std::io::Error| {
        let kind = if e.kind() == std::io::ErrorKind::PermissionDenied {
            WriteErrorKind::PermissionDenied
        } else {
            WriteErrorKind::Other
        };
        fail(kind, format!("{action} {}: {e}", path.display()))
    };
    match std::fs::read(path) {
        Ok(old) if old == text.as_bytes() => return Ok(false),
        Ok(_) if !force => {
            return Err(fail(
                WriteErrorKind::Differs,
                format!(
                    "{} exists with other content; pass --force to replace it (or --out DIR to \
                     write elsewhere)",
                    path.display()
                ),
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the folder of", e))?;
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).map_err(|e| io("writing", e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| io("setting the mode of", e))?;
    std::fs::rename(&partial, path).map_err(|e| io("writing", e))?;
    Ok(true)
}

/// The unit or agent text for `spec`.
pub fn render(spec: &UnitSpec) -> Result<String> {
    match spec.manager {
        Manager::SystemdSystem => render_system(spec),
        Manager::SystemdUser => render_user(spec),
        Manager::Launchd => render_launchd(spec),
    }
}

fn under_home(p: &Path) -> bool {
    ["/home", "/root", "/run/user"].iter().any(|h| p.starts_with(h))
}

/// `/var/lib/<rel>` → `rel`: systemd's StateDirectory= creates and owns it.
fn state_directory(root: &Path) -> Option<String> {
    let rel = root.strip_prefix("/var/lib").ok()?;
    let rel = rel.to_str()?;
    (!rel.is_empty() && !rel.contains(char::is_whitespace)).then(|| rel.to_owned())
}

fn header(spec: &UnitSpec, template: &str) -> String {
    let words = shell_words(&spec.words());
    let (scope, enable) = match spec.manager {
        Manager::SystemdSystem => {
            ("system-wide", "systemctl daemon-reload && systemctl enable --now")
        }
        _ => ("per user", "systemctl --user daemon-reload && systemctl --user enable --now"),
    };
    let operate = match spec.manager {
        Manager::SystemdSystem => format!(
            "sudo -u {} DWBASE_DATA_DIR={} dwbase deploy status   (the control socket is 0600 \
             and checks the caller's uid)",
            spec.run_as,
            shell_quote(&spec.root.to_string_lossy())
        ),
        _ => format!(
            "DWBASE_DATA_DIR={} dwbase deploy status",
            shell_quote(&spec.root.to_string_lossy())
        ),
    };
    format!(
        "# DWBase supervisor ({scope}), written by `dwbase deploy install-service` (dwbase {v})\n\
         # from {template} with this machine's paths:\n\
         #   {words}\n\
         # Enable: {enable} {UNIT_NAME}\n\
         # Operate: {operate}\n\n",
        v = env!("CARGO_PKG_VERSION"),
    )
}

/// The shipped unit without its leading comment block (install notes for the generic paths).
fn body(template: &str) -> Vec<String> {
    template
        .lines()
        .skip_while(|l| l.starts_with('#') || l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Line edits by `Key=` prefix; each key must occur exactly once.
struct Unit {
    file: &'static str,
    lines: Vec<String>,
}

impl Unit {
    fn index(&self, prefix: &str) -> Result<usize> {
        let hits: Vec<usize> = self
            .lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with(prefix))
            .map(|(i, _)| i)
            .collect();
        match hits.as_slice() {
            [i] => Ok(*i),
            _ => Err(anyhow!(
                "{}: expected exactly one line starting {prefix:?}, found {}: the shipped unit \
                 changed in a way ctl/src/service.rs does not know",
                self.file,
                hits.len()
            )),
        }
    }

    fn set(&mut self, prefix: &str, line: String) -> Result<()> {
        let i = self.index(prefix)?;
        self.lines[i] = line;
        Ok(())
    }

    fn remove(&mut self, prefix: &str) -> Result<()> {
        let i = self.index(prefix)?;
        self.lines.remove(i);
        Ok(())
    }

    fn text(&self, header: &str) -> String {
        let mut t = header.to_owned();
        t.push_str(&self.lines.join("\n"));
        t.push('\n');
        t
    }
}

fn render_system(spec: &UnitSpec) -> Result<String> {
    let file = "deploy/systemd/dwbase-supervisor.service";
    let mut u = Unit { file, lines: body(SYSTEMD_SYSTEM) };
    let root = spec.root.to_string_lossy();
    u.set("User=", format!("User={}", spec.run_as))?;
    if spec.run_as == DEFAULT_RUN_AS {
        u.set("Group=", format!("Group={DEFAULT_RUN_AS}"))?;
    } else {
        // The user's own primary group.
        u.remove("Group=")?;
    }
    u.set(
        "Environment=DWBASE_DATA_DIR=",
        format!("Environment={}", unit_value(&format!("DWBASE_DATA_DIR={root}"))),
    )?;
    u.set("ExecStart=", format!("ExecStart={}", exec_line(&spec.words())))?;
    match state_directory(&spec.root) {
        Some(rel) => u.set("StateDirectory=", format!("StateDirectory={rel}"))?,
        None => {
            u.remove("StateDirectory=")?;
            u.remove("StateDirectoryMode=")?;
        }
    }
    u.set("ReadWritePaths=", format!("ReadWritePaths={}", unit_value(&root)))?;
    if under_home(&spec.supervisor.program) || under_home(&spec.root) {
        u.set("ProtectHome=", "ProtectHome=read-only".into())?;
    }
    Ok(u.text(&header(spec, file)))
}

fn render_user(spec: &UnitSpec) -> Result<String> {
    let file = "deploy/systemd/user/dwbase-supervisor.service";
    let mut u = Unit { file, lines: body(SYSTEMD_USER) };
    let root = spec.root.to_string_lossy().into_owned();
    u.set(
        "Environment=DWBASE_DATA_DIR=",
        format!("Environment={}", unit_value(&format!("DWBASE_DATA_DIR={root}"))),
    )?;
    u.set(
        "ExecStartPre=",
        format!("ExecStartPre={}", exec_line(&["/bin/mkdir".into(), "-p".into(), root.clone()])),
    )?;
    u.set("ExecStart=", format!("ExecStart={}", exec_line(&spec.words())))?;
    Ok(u.text(&header(spec, file)))
}

fn render_launchd(spec: &UnitSpec) -> Result<String> {
    let file = "deploy/launchd/io.dwbase.supervisor.plist";
    let mut text = LAUNCHD_AGENT.to_owned();
    let mut replace = |from: &str, to: &str| -> Result<()> {
        match text.matches(from).count() {
            1 => {
                text = text.replacen(from, to, 1);
                Ok(())
            }
            n => Err(anyhow!(
                "{file}: expected {from:?} once, found it {n} times: the shipped agent changed \
                 in a way ctl/src/service.rs does not know"
            )),
        }
    };
    let root = spec.root.to_string_lossy();
    replace(
        r#"root="$HOME/Library/Application Support/dwbase";"#,
        &xml_escape(&format!("root={};", shell_quote(&root))),
    )?;
    let mut program = vec![spec.supervisor.program.to_string_lossy().into_owned()];
    program.extend(spec.supervisor.args.iter().cloned());
    replace(
        "exec dwbase-supervisor run ",
        &xml_escape(&format!("exec {} ", shell_words(&program))),
    )?;
    let metrics = match spec.metrics_addr {
        Some(addr) => format!(" --metrics-addr {addr}"),
        None => String::new(),
    };
    replace(&format!(" --metrics-addr {DEFAULT_METRICS_ADDR}"), &metrics)?;
    // Our own comment instead of the generic install notes (no "--" inside an XML comment).
    let start = text.find("<!--").ok_or_else(|| anyhow!("{file}: no comment"))?;
    let end = text.find("-->").ok_or_else(|| anyhow!("{file}: no comment end"))? + 3;
    let comment = format!(
        "<!--\n  DWBase supervisor (launchd agent), written by `dwbase deploy install-service` \
         (dwbase {v})\n  from {file} with this machine's paths:\n    program     {p}\n    \
         state root  {r}\n  Load: launchctl bootstrap gui/$(id -u) ~/Library/LaunchAgents/{f}\n  \
         Remove: launchctl bootout gui/$(id -u)/{LAUNCHD_LABEL}\n-->",
        v = env!("CARGO_PKG_VERSION"),
        p = xml_escape(&spec.supervisor.program.to_string_lossy()).replace("--", "- -"),
        r = xml_escape(&root).replace("--", "- -"),
        f = file_name(Manager::Launchd),
    );
    text.replace_range(start..end, &comment);
    Ok(text)
}

/// One systemd Exec line: each word with `%` and `$` escaped, quoted when needed.
fn exec_line(words: &[String]) -> String {
    words.iter().map(|w| quote_unit_word(&w.replace('$', "$$"))).collect::<Vec<_>>().join(" ")
}

/// A value of a non-Exec setting (Environment=, ReadWritePaths=): `%` escaped, quoted when
/// needed.
fn unit_value(s: &str) -> String {
    quote_unit_word(s)
}

fn quote_unit_word(s: &str) -> String {
    let escaped = s.replace('%', "%%");
    let needs = escaped.is_empty()
        || escaped.chars().any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'));
    if needs {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        escaped
    }
}

/// A word for a POSIX shell: as is when safe, else single-quoted.
fn shell_quote(s: &str) -> String {
    let safe =
        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn shell_words(words: &[String]) -> String {
    words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn which(name: &str) -> Option<OsString> {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|c| c.is_file())
                .map(PathBuf::into_os_string)
        })
    }

    fn spec(manager: Manager, program: &Path, root: &Path) -> UnitSpec {
        UnitSpec {
            manager,
            supervisor: Supervisor { program: program.to_owned(), args: vec!["run".into()] },
            root: root.to_owned(),
            run_as: DEFAULT_RUN_AS.into(),
            metrics_addr: Some(DEFAULT_METRICS_ADDR.parse().unwrap()),
        }
    }

    fn fake_supervisor(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("bin dir/dwbase-supervisor");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// `systemd-analyze verify` on a unit: None when the tool is missing (reason printed).
    fn verify(unit: &Path, user: bool, runtime: &Path) -> Option<String> {
        let Some(tool) = which("systemd-analyze") else {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIP systemd-analyze verify: systemd-analyze is not installed"
            );
            return None;
        };
        let mut cmd = Command::new(tool);
        if user {
            cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime);
        }
        let out = cmd.arg("verify").arg(unit).output().unwrap();
        Some(format!(
            "{}{}{}",
            if out.status.success() { "" } else { "FAILED " },
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    #[test]
    fn quoting() {
        assert_eq!(exec_line(&["/a/b".into(), "run".into()]), "/a/b run");
        assert_eq!(exec_line(&["/a b/%x$y".into()]), r#""/a b/%%x$$y""#);
        assert_eq!(unit_value("DWBASE_DATA_DIR=/a b"), r#""DWBASE_DATA_DIR=/a b""#);
        assert_eq!(shell_quote("/x/y"), "/x/y");
        assert_eq!(
            shell_quote("/Library/Application Support/it's"),
            r"'/Library/Application Support/it'\''s'"
        );
    }

    #[test]
    fn system_unit_has_the_paths_and_passes_systemd_analyze_verify() {
        let dir = tempfile::tempdir().unwrap();
        let sup = fake_supervisor(dir.path());
        let root = dir.path().join("state root");
        let s = spec(Manager::SystemdSystem, &sup, &root);
        let text = render(&s).unwrap();
        let quoted_sup = format!("\"{}\"", sup.display());
        assert!(
            text.contains(&format!(
                "\nExecStart={quoted_sup} run --root \"{}\" --foreground --metrics-addr 127.0.0.1:9464\n",
                root.display()
            )),
            "{text}"
        );
        assert!(text.contains(&format!("\nEnvironment=\"DWBASE_DATA_DIR={}\"\n", root.display())));
        assert!(text.contains(&format!("\nReadWritePaths=\"{}\"\n", root.display())));
        assert!(text.contains("\nUser=dwbase\n") && text.contains("\nGroup=dwbase\n"));
        assert!(!text.contains("StateDirectory"), "the root is not under /var/lib: {text}");
        assert!(!text.contains("/usr/local/bin"), "{text}");
        assert!(text.starts_with("# DWBase supervisor (system-wide)"));

        let var = spec(Manager::SystemdSystem, &sup, Path::new("/var/lib/dwbase-test"));
        let text = render(&UnitSpec { run_as: "nobody".into(), ..var }).unwrap();
        assert!(text.contains("\nStateDirectory=dwbase-test\n"), "{text}");
        assert!(text.contains("\nUser=nobody\n") && !text.contains("Group="), "{text}");

        let unit = dir.path().join(file_name(Manager::SystemdSystem));
        std::fs::write(&unit, render(&s).unwrap()).unwrap();
        if let Some(out) = verify(&unit, false, dir.path()) {
            assert!(out.trim().is_empty(), "systemd-analyze verify: {out}");
        }
    }

    #[test]
    fn user_unit_has_the_paths_and_passes_systemd_analyze_verify() {
        let dir = tempfile::tempdir().unwrap();
        let sup = fake_supervisor(dir.path());
        let root = dir.path().join("state");
        let s = spec(Manager::SystemdUser, &sup, &root);
        let text = render(&s).unwrap();
        assert!(text.contains(&format!("\nExecStartPre=/bin/mkdir -p {}\n", root.display())));
        assert!(text.contains(&format!(
            "\nExecStart=\"{}\" run --root {} --foreground --metrics-addr 127.0.0.1:9464\n",
            sup.display(),
            root.display()
        )));
        assert!(!text.contains("%h"), "every path filled in: {text}");
        let unit = dir.path().join(file_name(Manager::SystemdUser));
        std::fs::write(&unit, &text).unwrap();
        if let Some(out) = verify(&unit, true, dir.path()) {
            assert!(out.trim().is_empty(), "systemd-analyze --user verify: {out}");
        }
    }

    #[test]
    fn launchd_agent_has_the_paths() {
        let s = UnitSpec {
            manager: Manager::Launchd,
            supervisor: Supervisor {
                program: "/Users/me/bin/dwbase".into(),
                args: vec!["supervisor".into(), "run".into()],
            },
            root: "/Users/me/Library/Application Support/dwbase".into(),
            run_as: DEFAULT_RUN_AS.into(),
            metrics_addr: Some("127.0.0.1:9500".parse().unwrap()),
        };
        let text = render(&s).unwrap();
        assert!(
            text.contains(
                "root='/Users/me/Library/Application Support/dwbase'; mkdir -p \"$root\""
            ),
            "{text}"
        );
        assert!(text.contains("exec /Users/me/bin/dwbase supervisor run --root"), "{text}");
        assert!(text.contains("--foreground --metrics-addr 127.0.0.1:9500 2&gt;&gt;"), "{text}");
        let quiet = render(&UnitSpec { metrics_addr: None, ..s.clone() }).unwrap();
        assert!(!quiet.contains("--metrics-addr"), "{quiet}");
        assert!(!text.contains("$HOME/Library"), "{text}");
        let comment = &text[text.find("<!--").unwrap() + 4..text.find("-->").unwrap()];
        assert!(!comment.contains("--"), "{comment}");
        assert!(text.contains("<string>io.dwbase.supervisor</string>"));
    }

    #[test]
    fn writing_refuses_to_replace_another_unit_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("units/dwbase-supervisor.service");
        assert!(write_unit(&p, "a\n", false).unwrap());
        assert!(!write_unit(&p, "a\n", false).unwrap(), "same text: unchanged");
        let e = write_unit(&p, "b\n", false).unwrap_err();
        assert_eq!(e.kind, WriteErrorKind::Differs);
        assert!(e.to_string().contains("--force"));
        assert!(write_unit(&p, "b\n", true).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn the_supervisor_is_found_beside_the_cli() {
        let dir = tempfile::tempdir().unwrap();
        let cli = dir.path().join("dwbase");
        assert_eq!(
            Supervisor::beside(&cli),
            Supervisor { program: cli.clone(), args: vec!["supervisor".into(), "run".into()] }
        );
        std::fs::write(dir.path().join("dwbase-supervisor"), "").unwrap();
        assert_eq!(
            Supervisor::beside(&cli),
            Supervisor { program: dir.path().join("dwbase-supervisor"), args: vec!["run".into()] }
        );
    }
}
