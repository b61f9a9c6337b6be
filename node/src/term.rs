//! Colour on stderr, the same way in every program (`dwbase`, `dwbase-node`,
//! `dwbase-supervisor`): `--color auto|always|never`, and with `auto` the usual variables
//! (`NO_COLOR` set and non-empty turns colour off, `CLICOLOR_FORCE` on, `CLICOLOR=0` off) and
//! colour only when stderr is a terminal. The decision is anstream's, the crate clap uses for its
//! own help and errors, so log lines and clap agree.

use std::ffi::OsString;

/// `--color WHEN`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorWhen {
    /// Colour when stderr is a terminal and NO_COLOR is not set.
    #[default]
    Auto,
    /// Always colour (also into pipes and files).
    Always,
    /// Never colour.
    Never,
}

impl ColorWhen {
    /// Whether ANSI escape codes go to stderr.
    pub fn stderr(self) -> bool {
        match self {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto => {
                anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never
            }
        }
    }

    /// The same choice for clap's help and error output.
    pub fn clap(self) -> clap::ColorChoice {
        match self {
            ColorWhen::Auto => clap::ColorChoice::Auto,
            ColorWhen::Always => clap::ColorChoice::Always,
            ColorWhen::Never => clap::ColorChoice::Never,
        }
    }

    /// The value of the last `--color WHEN` / `--color=WHEN` in `args` (before clap parses
    /// them, so that clap's own messages follow it); `auto` when there is none or it is not
    /// one of the three (clap reports that one).
    pub fn from_args<I, T>(args: I) -> ColorWhen
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let mut found = ColorWhen::Auto;
        let mut next_is_value = false;
        for arg in args {
            let arg: OsString = arg.into();
            let Some(arg) = arg.to_str() else {
                next_is_value = false;
                continue;
            };
            if arg == "--" {
                break;
            }
            let value = if next_is_value {
                next_is_value = false;
                Some(arg)
            } else if arg == "--color" {
                next_is_value = true;
                None
            } else {
                arg.strip_prefix("--color=")
            };
            if let Some(v) = value {
                if let Ok(w) = <ColorWhen as clap::ValueEnum>::from_str(v, true) {
                    found = w;
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_color_flag_wins_and_bad_values_are_left_to_clap() {
        assert_eq!(ColorWhen::from_args(["dwbase", "deploy", "status"]), ColorWhen::Auto);
        assert_eq!(ColorWhen::from_args(["dwbase", "--color", "never", "x"]), ColorWhen::Never);
        assert_eq!(ColorWhen::from_args(["x", "--color=always"]), ColorWhen::Always);
        assert_eq!(
            ColorWhen::from_args(["x", "--color=never", "--color", "always"]),
            ColorWhen::Always
        );
        assert_eq!(ColorWhen::from_args(["x", "--color", "sometimes"]), ColorWhen::Auto);
        assert_eq!(ColorWhen::from_args(["x", "--", "--color=never"]), ColorWhen::Auto);
    }

    #[test]
    fn explicit_choices_ignore_the_environment() {
        assert!(ColorWhen::Always.stderr());
        assert!(!ColorWhen::Never.stderr());
    }
}
