//! The text screens: logs, describe, plan and volumes.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};

use super::style;
use crate::cli::table::age;
use crate::cli::table::render;
use crate::store::{PublishedPlan, VolumeLines};
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
    let (title, text) = match (&app.plan, &app.mode) {
        (Some(p), _) => (
            format!(" plan of the last pass, {} ago ", age(app.now_ms, p.at)),
            plan_lines(p),
        ),
        (None, Mode::InProcess) => (
            " plan ".to_owned(),
            vec![Line::from(Span::styled(
                "waiting for the first pass…",
                style(Tone::Muted),
            ))],
        ),
        (None, Mode::Attached(_)) => (
            " plan ".to_owned(),
            vec![
                Line::from("The daemon has not published a plan yet; it does after each pass."),
                Line::from("`r` asks it to reconcile now; `prism plan` prints what it would do."),
            ],
        ),
    };
    let p = Paragraph::new(text)
        .block(Block::bordered().title(title))
        .scroll((app.plan_scroll().min(u16::MAX as usize) as u16, 0));
    frame.render_widget(p, area);
}

/// A published plan as `prism plan` prints it, with tones.
fn plan_lines(p: &PublishedPlan) -> Vec<Line<'static>> {
    let mut text = Vec::new();
    if let Some(e) = &p.error {
        text.push(Line::from(Span::styled(
            format!("the pass failed before planning: {e}"),
            style(Tone::Bad),
        )));
        return text;
    }
    let plan = &p.plan;
    for n in &plan.nodes {
        let label = if n.name == n.id {
            n.id.clone()
        } else {
            format!("{} ({})", n.name, n.id)
        };
        text.push(Line::from(format!("on {label}:")));
        text.extend(n.actions.iter().map(|a| Line::from(format!("  {a}"))));
    }
    if !plan.placements.is_empty() {
        text.push(Line::from("placements:"));
        text.extend(plan.placements.iter().map(|c| Line::from(format!("  {c}"))));
    }
    text.extend(
        plan.unplaceable
            .iter()
            .map(|u| Line::from(Span::styled(u.line.clone(), style(Tone::Bad)))),
    );
    text.extend(
        plan.waiting
            .iter()
            .map(|w| Line::from(Span::styled(format!("… {w}"), style(Tone::Muted)))),
    );
    if text.is_empty() {
        text.push(Line::from(Span::styled(
            "No changes: the nodes run what fleet.toml asks for.",
            style(Tone::Good),
        )));
    }
    text
}

pub fn volumes(frame: &mut Frame, area: Rect, app: &App) {
    let (title, text) = match &app.plan {
        Some(p) => (
            format!(
                " volumes, as the last pass saw them {} ago ",
                age(app.now_ms, p.at)
            ),
            volume_lines(
                &p.volumes,
                |id| crate::tui::table::node_name(&app.data, id).to_owned(),
                app.now_ms,
            ),
        ),
        None => (
            " volumes ".to_owned(),
            vec![Line::from(Span::styled(
                "waiting for the first pass…",
                style(Tone::Muted),
            ))],
        ),
    };
    let p = Paragraph::new(text)
        .block(Block::bordered().title(title))
        .scroll((app.volumes_scroll().min(u16::MAX as usize) as u16, 0));
    frame.render_widget(p, area);
}

/// The volumes as `prism volumes` prints them; those fleet.toml no longer
/// wants stand out, as they are kept until deleted by hand.
fn volume_lines(
    v: &VolumeLines,
    node_name: impl Fn(&str) -> String,
    now: i64,
) -> Vec<Line<'static>> {
    let mut text = Vec::new();
    if v.ebs_unlisted {
        text.push(Line::from(Span::styled(
            "EC2 could not list the fleet's EBS volumes in that pass: durable volumes are missing",
            style(Tone::Bad),
        )));
    }
    if v.volumes.is_empty() {
        text.push(Line::from(Span::styled("No volumes.", style(Tone::Muted))));
        return text;
    }
    let rows = crate::cli::volumes::rows(v, node_name, now);
    let table = render(&crate::cli::volumes::HEADER, &rows);
    let mut lines = table.lines();
    if let Some(header) = lines.next() {
        text.push(Line::from(Span::styled(
            header.to_owned(),
            style(Tone::Muted),
        )));
    }
    for (line, v) in lines.zip(&v.volumes) {
        text.push(if v.wanted {
            Line::from(line.to_owned())
        } else {
            Line::from(Span::styled(line.to_owned(), style(Tone::Warn)))
        });
    }
    if v.volumes.iter().any(|v| !v.wanted) {
        text.push(Line::from(""));
        text.push(Line::from(Span::styled(
            "Volumes fleet.toml no longer wants are kept: `prism volumes delete APP` deletes them.",
            style(Tone::Muted),
        )));
    }
    text
}
