//! What draws over a screen: the help, generated from the keymap, and
//! the confirm dialog of destructive actions.

use ratatui::Frame;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use super::style;
use crate::tui::app::Tone;
use crate::tui::keymap::help_lines;

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let [row] = Layout::vertical([Constraint::Length(height.min(area.height))])
        .flex(Flex::Center)
        .areas(area);
    let [cell] = Layout::horizontal([Constraint::Length(width.min(area.width))])
        .flex(Flex::Center)
        .areas(row);
    cell
}

pub fn confirm(frame: &mut Frame, question: &str) {
    let area = centered(frame.area(), 60, 6);
    frame.render_widget(Clear, area);
    let text = vec![
        Line::from(question.to_owned()),
        Line::from(""),
        Line::from(vec![
            Span::styled("y", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(" yes    "),
            Span::styled("n/esc", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(" no"),
        ]),
    ];
    frame.render_widget(
        Paragraph::new(text).wrap(Wrap { trim: true }).block(
            Block::bordered()
                .title(" confirm ")
                .border_style(style(Tone::Warn)),
        ),
        area,
    );
}

/// What the header's proxy figures mean, under the keys.
const PROXY_LEGEND: &str =
    "proxy: requests/s over the last 5 s, and 5xx: the share of them answered 5xx";

pub fn help(frame: &mut Frame) {
    let lines = help_lines();
    let full = frame.area();
    // Two columns when one does not fit the height.
    let per_column = usize::from(full.height.saturating_sub(4)).max(1);
    let columns = if lines.len() > per_column { 2 } else { 1 };
    let rows = lines.len().div_ceil(columns);
    let area = centered(full, if columns == 2 { 116 } else { 80 }, rows as u16 + 4);
    frame.render_widget(Clear, area);
    let block = Block::bordered().title(" keys (any key closes) ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [keys, _, legend] = Layout::vertical([
        Constraint::Length(rows as u16),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(inner);
    frame.render_widget(
        Paragraph::new(PROXY_LEGEND).style(style(Tone::Muted)),
        legend,
    );
    let parts = Layout::horizontal(vec![Constraint::Ratio(1, columns as u32); columns]).split(keys);
    for (part, chunk) in parts.iter().zip(lines.chunks(rows)) {
        let text: Vec<Line> = chunk
            .iter()
            .map(|(keys, scope, what)| {
                let mut spans = vec![
                    Span::styled(
                        format!("{keys:>8} "),
                        Style::default().add_modifier(Modifier::BOLD),
                    ),
                    Span::raw(*what),
                ];
                if !scope.is_empty() {
                    spans.push(Span::styled(format!(" ({scope})"), style(Tone::Muted)));
                }
                Line::from(spans)
            })
            .collect();
        frame.render_widget(Paragraph::new(text), *part);
    }
}
