//! The text screens: logs, describe and plan.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};

use super::style;
use crate::tui::app::{App, Mode, Tone};

pub fn logs(frame: &mut Frame, area: Rect, app: &App) {
    let Some(v) = &app.logs else {
        return;
    };
    let tail = v
        .spec
        .tail
        .map_or_else(|| "all".to_owned(), |n| n.to_string());
    let on = |b: bool| if b { "on" } else { "off" };
    let title = format!(
        " logs {} · follow {} · wrap {} · timestamps {} · tail {tail} · {} ",
        v.title,
        on(v.follow),
        on(v.wrap),
        on(v.spec.timestamps),
        v.status
    );
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    let height = usize::from(inner.height);
    let width = usize::from(inner.width).max(1);
    let lines: Vec<&String> = v
        .lines
        .iter()
        .filter(|l| app.filter().is_none_or(|re| re.is_match(l)))
        .collect();
    let end = lines.len().saturating_sub(v.scroll);
    // Walk up from the end until the screen is full (wrapped lines take
    // more than one row).
    let mut start = end;
    let mut used = 0;
    while start > 0 {
        let rows = if v.wrap {
            lines[start - 1].chars().count().div_ceil(width).max(1)
        } else {
            1
        };
        if used + rows > height {
            break;
        }
        used += rows;
        start -= 1;
    }
    let text: Vec<Line> = lines[start..end]
        .iter()
        .map(|l| Line::from(l.as_str()))
        .collect();
    let mut p = Paragraph::new(text).block(block);
    if v.wrap {
        p = p.wrap(Wrap { trim: false });
    }
    frame.render_widget(p, area);
}

pub fn describe(frame: &mut Frame, area: Rect, app: &App) {
    let Some(d) = &app.describe else {
        return;
    };
    let p = Paragraph::new(d.text.as_str())
        .block(Block::bordered().title(format!(" describe {} ", d.title)))
        .wrap(Wrap { trim: false })
        .scroll((d.scroll.min(u16::MAX as usize) as u16, 0));
    frame.render_widget(p, area);
}

pub fn plan(frame: &mut Frame, area: Rect, app: &App) {
    let text: Vec<Line> = match (&app.plan_text, &app.mode) {
        (Some(t), _) => t.lines().map(|l| Line::from(l.to_owned())).collect(),
        (None, Mode::InProcess) => vec![Line::from(Span::styled(
            "waiting for the first pass…",
            style(Tone::Muted),
        ))],
        (None, Mode::Attached(_)) => vec![
            Line::from("The daemon plans and applies; this dashboard only watches it."),
            Line::from("`r` asks it to reconcile now; `prism plan` prints what it would do."),
        ],
    };
    let p = Paragraph::new(text)
        .block(Block::bordered().title(" plan: what the next reconcile would do "))
        .scroll((app.plan_scroll().min(u16::MAX as usize) as u16, 0));
    frame.render_widget(p, area);
}
