//! Drawing: a pure function of the app state onto a frame. Colours are
//! the terminal's named ones (green, yellow, red, cyan) plus bold, dim and
//! reversed, so they read on dark and light themes alike.

mod header;
mod overlay;
mod text;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Row, Table, TableState};

use super::app::{App, Input, Screen, Tone};
use super::table::{columns, visible};

pub(crate) fn style(tone: Tone) -> Style {
    match tone {
        Tone::Plain => Style::default(),
        Tone::Good => Style::default().fg(Color::Green),
        Tone::Warn => Style::default().fg(Color::Yellow),
        Tone::Bad => Style::default().fg(Color::Red),
        Tone::Info => Style::default().fg(Color::Cyan),
        Tone::Muted => Style::default().add_modifier(Modifier::DIM),
    }
}

/// The selected row: reversed and bold, which every theme shows.
pub(crate) fn selected() -> Style {
    Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
}

pub fn draw(frame: &mut Frame, app: &mut App) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(header::HEIGHT),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    header::draw(frame, head, app);
    // Borders and the column titles take three lines.
    app.page = usize::from(body.height.saturating_sub(3)).max(1);
    match app.screen {
        Screen::Nodes | Screen::Containers | Screen::Events => draw_table(frame, body, app),
        Screen::Logs => text::logs(frame, body, app),
        Screen::Describe => text::describe(frame, body, app),
        Screen::Plan => text::plan(frame, body, app),
        Screen::Volumes => text::volumes(frame, body, app),
    }
    footer(frame, foot, app);
    if let Some(c) = &app.confirm {
        overlay::confirm(frame, &c.question);
    }
    if app.help {
        overlay::help(frame);
    }
}

fn body_title(app: &App, count: usize) -> Line<'static> {
    let mut spans = vec![Span::styled(
        format!(" {} ({count}) ", app.screen.title()),
        Style::default().add_modifier(Modifier::BOLD),
    )];
    if let Some(re) = app.filter() {
        spans.push(Span::styled(
            format!("/{}/ ", re.as_str().trim_start_matches("(?i)")),
            style(Tone::Info),
        ));
    }
    Line::from(spans)
}

fn draw_table(frame: &mut Frame, area: Rect, app: &App) {
    let cols = columns(app.screen);
    let rows = app.rows();
    let shown = visible(cols, area.width.saturating_sub(2));
    let sort = app.sort_of(app.screen);
    let header = Row::new(shown.iter().map(|&i| {
        let arrow = match sort {
            Some((c, false)) if c == i => "↑",
            Some((c, true)) if c == i => "↓",
            _ => "",
        };
        Cell::from(format!("{}{arrow}", cols[i].title))
    }))
    .style(Style::default().add_modifier(Modifier::BOLD));
    let widths: Vec<Constraint> = shown
        .iter()
        .map(|&i| {
            if cols[i].fill {
                Constraint::Min(cols[i].min)
            } else {
                Constraint::Length(cols[i].min)
            }
        })
        .collect();
    let count = rows.len();
    let body: Vec<Row> = rows
        .into_iter()
        .map(|r| {
            Row::new(shown.iter().map(|&i| {
                r.cells
                    .get(i)
                    .map(|c| Cell::from(c.text.clone()).style(style(c.tone)))
                    .unwrap_or_default()
            }))
        })
        .collect();
    let table = Table::new(body, widths)
        .header(header)
        .block(Block::bordered().title(body_title(app, count)))
        .row_highlight_style(selected());
    let mut state = TableState::default().with_selected((count > 0).then(|| app.selected()));
    frame.render_stateful_widget(table, area, &mut state);
    if count == 0 {
        let inner = Rect {
            x: area.x + 2,
            y: area.y + 2,
            width: area.width.saturating_sub(4),
            height: 1.min(area.height.saturating_sub(3)),
        };
        let why = if app.filter().is_some() {
            "nothing matches the filter (esc clears it)"
        } else if app.data_error.is_some() {
            "cannot read the state store (see below)"
        } else {
            "nothing recorded yet"
        };
        frame.render_widget(Span::styled(why, style(Tone::Muted)), inner);
    }
}

/// Hints for the current screen, the input being typed, or a notice.
fn footer(frame: &mut Frame, area: Rect, app: &App) {
    let line = match &app.input {
        Input::Filter(t) => {
            let mut spans = vec![Span::raw(format!("/{t}")), Span::raw("▏")];
            if let Some(e) = &app.input_error {
                spans.push(Span::styled(format!("  {e}"), style(Tone::Warn)));
            }
            Line::from(spans)
        }
        Input::Command(t) => Line::from(vec![Span::raw(format!(":{t}")), Span::raw("▏")]),
        Input::None => match (&app.notice, &app.data_error) {
            (Some((text, tone, _)), _) => Line::from(Span::styled(text.clone(), style(*tone))),
            (None, Some(e)) => Line::from(Span::styled(e.clone(), style(Tone::Bad))),
            (None, None) => hints(app.screen),
        },
    };
    frame.render_widget(line, area);
}

fn hints(screen: Screen) -> Line<'static> {
    let keys: &[(&str, &str)] = match screen {
        Screen::Containers => &[
            ("l", "logs"),
            ("d", "describe"),
            ("x", "restart"),
            ("/", "filter"),
            (":", "cmd"),
            ("r", "reconcile"),
            ("?", "help"),
            ("q", "quit"),
        ],
        Screen::Nodes => &[
            ("enter", "pods"),
            ("D", "drain"),
            ("/", "filter"),
            (":", "cmd"),
            ("r", "reconcile"),
            ("?", "help"),
            ("q", "quit"),
        ],
        Screen::Logs => &[
            ("f", "follow"),
            ("w", "wrap"),
            ("t", "timestamps"),
            ("T", "tail"),
            ("/", "search"),
            ("esc", "back"),
            ("?", "help"),
        ],
        _ => &[
            ("/", "filter"),
            (":", "cmd"),
            ("tab", "next"),
            ("esc", "back"),
            ("r", "reconcile"),
            ("?", "help"),
            ("q", "quit"),
        ],
    };
    let mut spans = Vec::new();
    for (k, what) in keys {
        spans.push(Span::styled(
            (*k).to_owned(),
            Style::default().add_modifier(Modifier::BOLD),
        ));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Line::from(spans)
}

#[cfg(test)]
mod tests;
