//! The header: which fleet, who applies, how the nodes and pods are, the
//! last reconcile and, when known, the proxy's traffic.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::style;
use crate::cli::table::age;
use crate::tui::app::{App, Mode, Screen, Tone};

pub const HEIGHT: u16 = 3;

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let who = match &app.mode {
        Mode::InProcess => "operator: here".to_owned(),
        Mode::Attached(l) => format!("operator: {} pid {}", l.role, l.pid),
    };
    let mut first = vec![
        Span::styled("Prism", bold),
        Span::raw(format!(" fleet {}  ", app.fleet)),
    ];
    for s in [
        Screen::Nodes,
        Screen::Containers,
        Screen::Events,
        Screen::Plan,
    ] {
        let label = format!(" {} ", s.title());
        first.push(if s == app.screen {
            Span::styled(label, super::selected())
        } else {
            Span::raw(label)
        });
    }

    let c = app.counts();
    let nodes_tone = if c.nodes_total == 0 {
        Tone::Muted
    } else if c.nodes_ready == c.nodes_total {
        Tone::Good
    } else {
        Tone::Warn
    };
    let kinds: Vec<String> = c
        .ready_by_lifecycle
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let pods_tone = if c.pods_running == c.pods_desired {
        Tone::Good
    } else {
        Tone::Warn
    };
    let unplaceable = app
        .last_pass
        .as_ref()
        .map_or(c.unplaced, |p| p.unplaceable.max(c.unplaced));
    let mut second = vec![
        Span::raw("nodes "),
        Span::styled(
            format!("{}/{} ready", c.nodes_ready, c.nodes_total),
            style(nodes_tone),
        ),
        Span::raw(if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        }),
        Span::raw("  pods "),
        Span::styled(
            format!("{}/{} running", c.pods_running, c.pods_desired),
            style(pods_tone),
        ),
    ];
    if unplaceable > 0 {
        second.push(Span::styled(
            format!("  {unplaceable} unplaceable"),
            style(Tone::Bad),
        ));
    }

    let mut third = vec![
        Span::styled(who, style(Tone::Muted)),
        Span::raw(" · reconcile "),
    ];
    match (&app.last_pass, &app.mode) {
        (Some(p), _) => {
            let took = if p.took < std::time::Duration::from_secs(1) {
                format!("{}ms", p.took.as_millis())
            } else {
                format!("{:.1}s", p.took.as_secs_f64())
            };
            third.push(Span::raw(format!(
                "{} ago, took {took}: ",
                age(app.now_ms, p.finished_ms)
            )));
            third.push(match (&p.error, p.failed) {
                (Some(e), _) => Span::styled(format!("failed: {e}"), style(Tone::Bad)),
                (None, 0) if p.actions == 0 => Span::styled("nothing to do", style(Tone::Good)),
                (None, 0) => Span::styled(format!("{} actions ok", p.actions), style(Tone::Good)),
                (None, f) => Span::styled(
                    format!("{f} of {} actions failed", p.actions),
                    style(Tone::Bad),
                ),
            });
        }
        (None, Mode::Attached(_)) => match &app.data.lock {
            Some(l) => third.push(Span::raw(format!(
                "by it; last pass began {} ago",
                age(app.now_ms, l.heartbeat_at)
            ))),
            None => third.push(Span::styled(
                "no daemon holds the lock now",
                style(Tone::Warn),
            )),
        },
        (None, Mode::InProcess) => {
            third.push(Span::styled("first pass running…", style(Tone::Muted)))
        }
    }
    if let Some(p) = app.proxy {
        let tone = if p.error_ratio > 0.05 {
            Tone::Bad
        } else {
            Tone::Plain
        };
        third.push(Span::raw(format!(
            "  proxy {:.1} req/s, ",
            p.requests_per_s
        )));
        third.push(Span::styled(
            format!("{:.1}% errors", p.error_ratio * 100.0),
            style(tone),
        ));
    }
    let text = vec![Line::from(first), Line::from(second), Line::from(third)];
    frame.render_widget(Paragraph::new(text), area);
}
