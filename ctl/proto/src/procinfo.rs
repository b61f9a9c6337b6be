//! Facts about processes by pid, used to tell our node from a stranger that reused its pid.

/// The start time of a process, in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
/// `None` if the process does not exist (or on platforms without procfs).
///
/// A pid alone is not an identity: after a node dies its pid can be handed to any other
/// process. pid + start time is.
#[cfg(target_os = "linux")]
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// The start time of a process (unsupported here: always `None`, so callers treat every
/// recorded pid as gone rather than signalling a stranger).
#[cfg(not(target_os = "linux"))]
pub fn start_time(_pid: u32) -> Option<u64> {
    None
}

/// Parses field 22 of a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses
/// and may itself contain spaces or parentheses, so fields are counted after the last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // after the comm come: state(3) ppid(4) … starttime(22) → index 19 of the rest.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process is a zombie (exited, not yet reaped) — it holds its pid but is gone.
#[cfg(target_os = "linux")]
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Whether the process is a zombie (unsupported here: false).
#[cfg(not(target_os = "linux"))]
pub fn is_zombie(_pid: u32) -> bool {
    false
}

/// What became of a recorded process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Liveness {
    /// The pid runs and its start time matches the record: it is ours.
    Alive,
    /// No such process (or a zombie).
    Dead,
    /// The pid runs but started at another time: a stranger reused it. Never signal it.
    PidReused,
}

impl Liveness {
    /// The word status prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Dead => "dead",
            Self::PidReused => "pid-reused",
        }
    }
}

/// Checks a recorded (pid, start time) pair against the live process table.
pub fn liveness(pid: u32, recorded_start: Option<u64>) -> Liveness {
    match start_time(pid) {
        None => Liveness::Dead,
        Some(_) if is_zombie(pid) => Liveness::Dead,
        Some(now) => match recorded_start {
            Some(then) if then == now => Liveness::Alive,
            // No start time was recorded: we cannot prove it is ours, so we must not claim it.
            _ => Liveness::PidReused,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_time_past_tricky_comm() {
        let line = "1234 (we ird) name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(parse_start_time(line), Some(987654));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_reuse() {
        let me = std::process::id();
        let st = start_time(me).expect("own start time");
        assert_eq!(liveness(me, Some(st)), Liveness::Alive);
        assert_eq!(liveness(me, Some(st + 1)), Liveness::PidReused);
        assert_eq!(liveness(me, None), Liveness::PidReused);
        assert_eq!(liveness(u32::MAX - 1, Some(1)), Liveness::Dead);
    }
}
