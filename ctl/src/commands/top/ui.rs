//! Drawing the model: header, node table, log pane, footer, and the help and confirmation
//! overlays. Colour only when `NO_COLOR` is unset; without it, selection and warnings use
//! reverse video and bold, which every terminal has.

use std::time::{Duration, Instant};

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, Row as TableRow, Table, TableState,
};
use ratatui::Frame;

use super::model::{Confirm, Focus, Mode, Model, Row, Source};
use crate::output::{human_bytes, humanize};

/// Colours on or off.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    /// Whether colours may be used (`NO_COLOR` unset or empty).
    pub color: bool,
}

impl Theme {
    /// From `--color` and the environment: `never` or, with `auto`, `NO_COLOR` set and not
    /// empty (<https://no-color.org>) means no colour.
    pub fn new(when: dwbase_node::term::ColorWhen) -> Self {
        use dwbase_node::term::ColorWhen;
        let color = match when {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto => std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        };
        Self { color }
    }

    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    fn state(&self, state: &str) -> Style {
        match state {
            "ready" | "alive" => self.fg(Color::Green),
            "starting" | "unready" | "degraded" | "stopping" => self.fg(Color::Yellow),
            "backoff" | "crash-loop" | "dead" | "pid-reused" => {
                self.fg(Color::Red).add_modifier(Modifier::BOLD)
            }
            _ => self.fg(Color::DarkGray),
        }
    }

    fn selected(&self) -> Style {
        if self.color {
            Style::default().bg(Color::Blue).fg(Color::White).add_modifier(Modifier::BOLD)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }

    fn alert(&self) -> Style {
        if self.color {
            Style::default().bg(Color::Red).fg(Color::White).add_modifier(Modifier::BOLD)
        } else {
            Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        }
    }

    fn dim(&self) -> Style {
        self.fg(Color::DarkGray)
    }
}

const HEADERS: [&str; 12] = [
    "NODE",
    "STATE",
    "READY",
    "PID",
    "PORT",
    "RESTARTS",
    "UPTIME",
    "LAST EXIT",
    "CPU%",
    "RSS",
    "REQ/S",
    "P99",
];

/// Draws everything.
pub fn draw(f: &mut Frame, m: &Model, theme: Theme, now: Instant) {
    let area = f.area();
    let table_height = {
        let wanted = m.rows.len() as u16 + 3;
        let cap = match m.focus {
            Focus::Table => area.height.saturating_sub(2) / 2,
            Focus::Log => 6,
        };
        wanted.min(cap.max(4))
    };
    let [header, table, log, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(table_height),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(f, header, m, theme);
    draw_table(f, table, m, theme, now);
    draw_log(f, log, m, theme);
    draw_footer(f, footer, m, theme);
    match &m.mode {
        Mode::Help => draw_help(f, area),
        Mode::Confirm(c) => draw_confirm(f, area, c, theme),
        _ => {}
    }
}

fn draw_header(f: &mut Frame, area: Rect, m: &Model, theme: Theme) {
    let line = match &m.source {
        Source::Connecting => Line::from("dwbase top: connecting…"),
        Source::Supervisor { pid, version, started_unix_ms } => {
            let up = (super::model::now_unix_ms() - started_unix_ms).max(0) as u64;
            Line::from(vec![
                Span::styled("dwbase top", Style::default().add_modifier(Modifier::BOLD)),
                Span::raw(format!(
                    "  supervisor pid {pid}, dwbase {version}, up {}  ·  {} node{}  ·  ? help",
                    humanize(Duration::from_millis(up)),
                    m.rows.len(),
                    if m.rows.len() == 1 { "" } else { "s" }
                )),
            ])
        }
        Source::StateFiles { reason, since_unix_ms, files } => {
            let since = super::model::now_unix_ms() - since_unix_ms;
            let files = if files.is_empty() {
                "nothing recorded".to_owned()
            } else {
                files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            };
            Line::from(Span::styled(
                format!(
                    " SUPERVISOR AWAY ({reason}, {}): showing {files}; resumes when it is back ",
                    humanize(Duration::from_millis(since.max(0) as u64))
                ),
                theme.alert(),
            ))
        }
    };
    f.render_widget(Paragraph::new(line), area);
}

fn figure(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

fn cells(r: &Row, now: Instant) -> [String; 12] {
    let fig = &r.figures;
    [
        r.name.clone(),
        r.state.clone(),
        match r.ready {
            Some(true) => "yes".into(),
            Some(false) => "no".into(),
            None => "?".into(),
        },
        r.pid.map_or("-".into(), |p| p.to_string()),
        r.port.to_string(),
        r.restarts.to_string(),
        r.uptime_ms(now).map_or("-".into(), |u| humanize(Duration::from_millis(u))),
        r.last_exit.clone(),
        figure(fig.cpu_pct, |c| format!("{c:.1}")),
        fig.rss_bytes.map_or("-".into(), human_bytes),
        figure(fig.req_rate, |r| if r >= 100.0 { format!("{r:.0}") } else { format!("{r:.1}") }),
        figure(fig.p99_ms, |p| if p >= 10.0 { format!("{p:.0}ms") } else { format!("{p:.2}ms") }),
    ]
}

fn draw_table(f: &mut Frame, area: Rect, m: &Model, theme: Theme, now: Instant) {
    let rows: Vec<[String; 12]> = m.rows.iter().map(|r| cells(r, now)).collect();
    let mut widths: Vec<u16> = HEADERS.iter().map(|h| h.len() as u16).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count() as u16);
        }
    }
    let body: Vec<TableRow> = m
        .rows
        .iter()
        .zip(rows)
        .map(|(r, cells)| {
            let state_style = theme.state(&r.state);
            TableRow::new(cells.into_iter().enumerate().map(|(i, c)| {
                if i == 1 {
                    Cell::from(c).style(state_style)
                } else {
                    Cell::from(c)
                }
            }))
        })
        .collect();
    let title = match m.focus {
        Focus::Table => " nodes ",
        Focus::Log => " nodes (l: back) ",
    };
    let table = Table::new(body, widths.iter().map(|w| Constraint::Length(*w)))
        .header(
            TableRow::new(HEADERS.iter().map(|h| Cell::from(*h)))
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::default().borders(Borders::ALL).title(title))
        .row_highlight_style(theme.selected())
        .highlight_symbol("▶ ")
        .column_spacing(2);
    let mut state = TableState::default().with_selected((!m.rows.is_empty()).then_some(m.selected));
    f.render_stateful_widget(table, area, &mut state);
    if m.rows.is_empty() {
        let inner =
            Rect { y: area.y + 2, height: 1, ..area.inner(ratatui::layout::Margin::new(2, 0)) };
        let text = match m.source {
            Source::Connecting => "",
            _ => "no nodes deployed (dwbase deploy devnet starts some)",
        };
        f.render_widget(Paragraph::new(text).style(theme.dim()), inner);
    }
}

/// The time of a log line, UTC like the log files.
fn clock(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:02}:{:02}:{:02}.{:03}", t.hour(), t.minute(), t.second(), t.millisecond())
}

fn draw_log(f: &mut Frame, area: Rect, m: &Model, theme: Theme) {
    let mut title = match m.log.node() {
        Some(n) => format!(" log: {n} "),
        None => " log ".to_owned(),
    };
    if !m.log.filter.is_empty() {
        title.push_str(&format!("(filter: {}) ", m.log.filter));
    }
    title.push_str(if m.log.scroll == 0 { "[following] " } else { "[scrolled: End follows] " });
    let focused = m.focus == Focus::Log;
    let block = Block::default().borders(Borders::ALL).title(title).border_style(if focused {
        Style::default().add_modifier(Modifier::BOLD)
    } else {
        theme.dim()
    });
    let inner_height = area.height.saturating_sub(2) as usize;
    let visible = m.log.visible();
    let end = visible.len().saturating_sub(m.log.scroll.min(visible.len()));
    let start = end.saturating_sub(inner_height);
    // Lines are cut to the pane's width here, so a long line costs what is shown.
    let width = area.width.saturating_sub(2 + 13) as usize;
    let mut lines: Vec<Line> = visible[start..end]
        .iter()
        .map(|(ts, text)| {
            let text = match text.char_indices().nth(width) {
                Some((cut, _)) => &text[..cut],
                None => text.as_str(),
            };
            Line::from(vec![Span::styled(format!("{} ", clock(*ts)), theme.dim()), Span::raw(text)])
        })
        .collect();
    if let Some(e) = &m.log.error {
        lines.push(Line::from(Span::styled(e.clone(), theme.alert())));
    }
    f.render_widget(Paragraph::new(lines).block(block), area);
}

fn draw_footer(f: &mut Frame, area: Rect, m: &Model, theme: Theme) {
    let line = match &m.mode {
        Mode::Filter(text) => Line::from(vec![
            Span::styled("filter the log: /", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(text.clone()),
            Span::styled("█", Style::default()),
            Span::styled("  (Enter applies, empty clears, Esc cancels)", theme.dim()),
        ]),
        _ => {
            if let Some(busy) = &m.busy {
                Line::from(Span::styled(format!("{busy}…"), theme.fg(Color::Yellow)))
            } else if let Some((note, err)) = &m.note {
                let style = if *err { theme.alert() } else { Style::default() };
                Line::from(Span::styled(note.clone(), style))
            } else {
                Line::from(Span::styled(
                    "↑↓/jk select  r restart  s stop/start  l log  / filter  ? help  q quit",
                    theme.dim(),
                ))
            }
        }
    };
    f.render_widget(Paragraph::new(line), area);
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

const HELP: &[(&str, &str)] = &[
    ("↑ ↓  j k", "select a node (in the log: scroll)"),
    ("g G  Home End", "first / last node (in the log: top / follow)"),
    ("PgUp PgDn", "scroll the log"),
    ("r", "restart the selected node (asks first)"),
    ("s", "stop the selected node (asks first), or start it if stopped"),
    ("l", "focus the log pane (l or Esc: back)"),
    ("/", "filter the log (Enter applies, empty clears)"),
    ("Esc", "clear the filter or the message"),
    ("?", "this help"),
    ("q  Ctrl+C", "quit"),
];

fn draw_help(f: &mut Frame, area: Rect) {
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:<15}"), Style::default().add_modifier(Modifier::BOLD)),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.push(Line::from(
        "CPU% and RSS from /proc; REQ/S and P99 (remember/ask/replay) from each node's /metrics.",
    ));
    lines.push(Line::from("Any key closes this help."));
    let rect = centered(area, 92, lines.len() as u16 + 2);
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" keys ")),
        rect,
    );
}

fn draw_confirm(f: &mut Frame, area: Rect, c: &Confirm, theme: Theme) {
    let question = match c {
        Confirm::Restart(n) => format!("Restart {n}? Its process is stopped and started again."),
        Confirm::Stop(n) => format!("Stop {n}? It stays stopped until started (s)."),
    };
    let lines = vec![
        Line::from(Span::styled(question.clone(), Style::default().add_modifier(Modifier::BOLD))),
        Line::from(""),
        Line::from("y: yes    any other key: no"),
    ];
    let rect = centered(area, question.chars().count() as u16 + 4, 5);
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" confirm ")
                .border_style(theme.fg(Color::Yellow)),
        ),
        rect,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    /// The screen as text, drawn on ratatui's in-memory backend.
    fn screen(m: &Model, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, m, Theme { color: false }, Instant::now())).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_owned()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_tiny_terminal_does_not_panic_and_help_shows_the_keys() {
        let mut m = Model::default();
        for (w, h) in [(1, 1), (10, 3), (40, 8), (200, 60)] {
            screen(&m, w, h);
        }
        m.mode = Mode::Help;
        let s = screen(&m, 120, 30);
        assert!(s.contains("restart the selected node"), "{s}");
    }
}
