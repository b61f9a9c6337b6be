//! Node logs: the writing side ([`pipe`], a separate small process per node) and the reading
//! side ([`reader`], used by the supervisor's `Logs` handler and by the CLI when no
//! supervisor runs).
//!
//! On disk, one log per node: `<node dir>/logs/node.log` (the current file) and
//! `node.log.1` (newest rotated) … `node.log.K`. Every line is
//!
//! ```text
//! 2026-11-25T08:00:00.123Z <what the node wrote>
//! ```
//!
//! — an RFC 3339 UTC timestamp with milliseconds and one space ([`timestamp::PREFIX_LEN`]
//! bytes), then the node's bytes as written (not necessarily UTF-8), then `\n`. Lines longer
//! than [`MAX_LINE`] are split. [`parse_line`] splits the prefix back off.
//!
//! The supervisor spawns the pipe as
//! `dwbase-supervisor logpipe --file <node dir>/logs/node.log --max-bytes N --keep K
//! --drain-timeout-ms <stop timeout>` ([`LogpipeArgs`], [`logpipe_main`]) in the node's
//! process group, with the read end of the node's stdout+stderr pipe as its stdin.

pub mod pipe;
pub mod reader;
pub mod timestamp;

pub use pipe::{
    logpipe_main, pump, LogpipeArgs, PipeConfig, Stats, DEFAULT_DRAIN_TIMEOUT_MS, DEFAULT_KEEP,
    DEFAULT_MAX_BYTES, MAX_LINE,
};
pub use reader::{
    log_files, merge_by_time, parse_line, parse_line_bytes, rotated_path, tail, Follower,
    MultiFollower, DEFAULT_POLL_INTERVAL,
};
