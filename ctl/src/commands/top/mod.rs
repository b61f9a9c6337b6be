//! `dwbase deploy top`: the live view of a deployment, in the terminal (ratatui + crossterm).
//!
//! The node table comes from the supervisor (see [`feed`]); without one it shows what the
//! state files record and says so, and resumes when a supervisor answers again. CPU % and RSS
//! come from /proc, request rate and p99 from each node's `/metrics` ([`sample`]), once per
//! `--interval`. The selected node's log follows below ([`logpane`]). Colour follows `--color`
//! and `NO_COLOR`. Keys are handled in [`model`], drawing in [`ui`]; this file is the loop and
//! the terminal.
//!
//! The terminal is put back (raw mode off, main screen, cursor shown) on every way out: `q`,
//! Ctrl+C, SIGTERM/SIGHUP/SIGINT, an error, and a panic (the hook restores it before the
//! message is printed).

mod feed;
mod logpane;
mod model;
mod sample;
mod ui;

use std::io::{self, IsTerminal, Stdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use crossterm::event::{Event, EventStream};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use dwbase_proto::{NodeRef, Paths, Request, Response, StopSpec};
use futures::StreamExt;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use model::{Command, Model};
use sample::{Figures, Sampler, Target};

/// `dwbase deploy top`
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// How often each node's CPU, memory and /metrics are sampled (request rate and p99 are
    /// over this window).
    #[arg(long, default_value = "2s", value_parser = crate::cli::parse_duration)]
    pub interval: Duration,
}

/// How often the followed log file is looked at.
const LOG_POLL: Duration = Duration::from_millis(200);

/// Set by the panic hook: a task panicked, the terminal is restored, the loop must end.
static PANICKED: AtomicBool = AtomicBool::new(false);

/// `dwbase deploy top`.
pub async fn run(paths: &Paths, args: TopArgs) -> Result<()> {
    if !io::stdout().is_terminal() || !io::stdin().is_terminal() {
        bail!(crate::Usage(
            "dwbase deploy top needs a terminal on stdin and stdout; for scripts and dumb \
             terminals use `dwbase deploy status` (--json for machines)"
                .into()
        ));
    }
    if args.interval < Duration::from_millis(200) {
        bail!(crate::Usage(format!(
            "--interval {:?} is too short (at least 200ms: rates need time between samples)",
            args.interval
        )));
    }
    let mut term = Screen::enter().context("setting up the terminal")?;
    let result = event_loop(&mut term.terminal, paths, &args).await;
    drop(term);
    if PANICKED.load(Ordering::SeqCst) {
        bail!("the live view stopped after an internal error (the panic message is above)");
    }
    result
}

/// The terminal in raw mode on the alternate screen; put back on drop.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    fn enter() -> io::Result<Self> {
        install_panic_hook();
        enable_raw_mode()?;
        let mut out = io::stdout();
        if let Err(e) = crossterm::execute!(out, EnterAlternateScreen, crossterm::cursor::Hide) {
            restore_terminal();
            return Err(e);
        }
        match Terminal::new(CrosstermBackend::new(out)) {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore_terminal();
                Err(e)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Raw mode off, main screen, cursor on. Safe to call more than once.
fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = crossterm::execute!(io::stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            restore_terminal();
            previous(info);
        }));
    });
}

async fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    paths: &Paths,
    args: &TopArgs,
) -> Result<()> {
    // The global --color (its value as main parsed it: the last one given).
    let theme = ui::Theme::new(dwbase_node::term::ColorWhen::from_args(std::env::args_os()));
    let (update_tx, mut updates) = mpsc::unbounded_channel();
    let feed = tokio::spawn(feed::run(paths.clone(), update_tx));
    let (targets_tx, targets_rx) = watch::channel(Vec::<Target>::new());
    let (figures_tx, mut figures) = mpsc::unbounded_channel();
    let sampler = tokio::spawn(sample_loop(targets_rx, figures_tx, args.interval));
    let (done_tx, mut done) = mpsc::unbounded_channel::<(String, Result<String, String>)>();

    let mut keys = EventStream::new();
    let mut log_tick = tokio::time::interval(LOG_POLL);
    log_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut clock_tick = tokio::time::interval(Duration::from_secs(1));
    clock_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut quit = signals::Quit::new()?;

    let mut model = Model::default();
    let mut dirty = true;
    let result = loop {
        if PANICKED.load(Ordering::SeqCst) {
            break Ok(());
        }
        if dirty {
            terminal.draw(|f| ui::draw(f, &model, theme, Instant::now()))?;
            dirty = false;
        }
        tokio::select! {
            ev = keys.next() => match ev {
                Some(Ok(Event::Key(key))) => {
                    dirty = true;
                    match model.on_key(key) {
                        Command::None => {}
                        Command::Quit => break Ok(()),
                        cmd => {
                            let what = match &cmd {
                                Command::Restart(n) => format!("restarting {n}"),
                                Command::Stop(n) => format!("stopping {n}"),
                                _ => String::new(),
                            };
                            model.busy = Some(what.clone());
                            let (paths, tx) = (paths.clone(), done_tx.clone());
                            tokio::spawn(async move {
                                let _ = tx.send((what, act(&paths, cmd).await));
                            });
                        }
                    }
                }
                Some(Ok(Event::Resize(..))) => {
                    terminal.autoresize()?;
                    dirty = true;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("reading the keyboard")),
                None => break Ok(()),
            },
            Some(u) = updates.recv() => {
                let now = Instant::now();
                model.apply(u, now);
                while let Ok(u) = updates.try_recv() {
                    model.apply(u, now);
                }
                let targets = model.targets();
                targets_tx.send_if_modified(|t| {
                    let changed = *t != targets;
                    if changed {
                        *t = targets;
                    }
                    changed
                });
                dirty = true;
            }
            Some(f) = figures.recv() => {
                model.apply_figures(f);
                dirty = true;
            }
            Some((what, res)) = done.recv() => {
                model.busy = None;
                model.note = Some(match res {
                    Ok(msg) => (msg, false),
                    Err(e) => (format!("{what}: {e}"), true),
                });
                dirty = true;
            }
            _ = log_tick.tick() => {
                if model.log.poll() {
                    dirty = true;
                }
            }
            _ = clock_tick.tick() => dirty = true,
            _ = quit.recv() => break Ok(()),
        }
    };
    feed.abort();
    sampler.abort();
    result
}

/// Samples the current targets every `interval` (at once when they change).
async fn sample_loop(
    mut targets: watch::Receiver<Vec<Target>>,
    tx: mpsc::UnboundedSender<Vec<(String, Figures)>>,
    interval: Duration,
) {
    let mut sampler = Sampler::new(interval.min(Duration::from_secs(2)));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = targets.changed() => if changed.is_err() { return },
        }
        let list = targets.borrow_and_update().clone();
        if list.is_empty() {
            continue;
        }
        let figures = sampler.sample(&list).await;
        if tx.send(figures).is_err() {
            return;
        }
    }
}

/// Carries out a key's action through the supervisor; the message for the footer.
async fn act(paths: &Paths, cmd: Command) -> Result<String, String> {
    let mut client = match crate::daemon::connect(paths).await {
        Ok(Some(c)) => c,
        Ok(None) => return Err("no supervisor answers".into()),
        Err(e) => return Err(e.to_string()),
    };
    let (req, limit) = match cmd {
        Command::Restart(node) => (Request::Restart(NodeRef { node }), Duration::from_secs(130)),
        Command::Stop(node) => (
            Request::Stop(StopSpec { nodes: vec![node], group: None, timeout_ms: None }),
            Duration::from_secs(330),
        ),
        Command::None | Command::Quit => return Ok(String::new()),
    };
    match crate::daemon::request(&mut client, &req, limit).await {
        Ok(Response::Done(d)) => Ok(d.message),
        Ok(other) => Err(format!("unexpected answer: {other:?}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// The signals that end the view cleanly.
mod signals {
    use std::io;

    /// SIGTERM, SIGHUP (the terminal went away) and SIGINT.
    #[cfg(unix)]
    pub struct Quit {
        term: tokio::signal::unix::Signal,
        hup: tokio::signal::unix::Signal,
        int: tokio::signal::unix::Signal,
    }

    #[cfg(unix)]
    impl Quit {
        pub fn new() -> io::Result<Self> {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
                int: signal(SignalKind::interrupt())?,
            })
        }

        pub async fn recv(&mut self) {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.hup.recv() => {}
                _ = self.int.recv() => {}
            }
        }
    }

    /// Ctrl+C only.
    #[cfg(not(unix))]
    pub struct Quit;

    #[cfg(not(unix))]
    impl Quit {
        pub fn new() -> io::Result<Self> {
            Ok(Self)
        }

        pub async fn recv(&mut self) {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
