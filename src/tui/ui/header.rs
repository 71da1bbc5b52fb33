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
use crate::tui::traffic::ProxyView;

pub(crate) const HEIGHT: u16 = 3;

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let who = match &app.mode {
        Mode::InProcess => "operator: here".to_owned(),
        Mode::Attached(l) => match &app.remote {
            Some(url) => format!("operator: {} pid {} via {url}", l.role, l.pid),
            None => format!("operator: {} pid {}", l.role, l.pid),
        },
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
                "by it; heartbeat {} ago",
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
    // Writes the store does not take: the healing goes on, the record not.
    if let Some(p) = app.last_pass.as_ref().filter(|p| p.store.failed > 0) {
        let now = if p.store.ok_now { "" } else { ", failing now" };
        third.push(Span::styled(
            format!("  store: {} writes failed{now}", p.store.failed),
            style(if p.store.ok_now {
                Tone::Warn
            } else {
                Tone::Bad
            }),
        ));
    }
    if let (Mode::Attached(_), Some(l)) = (&app.mode, &app.data.lock) {
        let late = i64::try_from(crate::operator::HEARTBEAT_LATE.as_millis()).unwrap_or(i64::MAX);
        if app.now_ms.saturating_sub(l.heartbeat_at) > late {
            third.push(Span::styled(
                "  the daemon writes no heartbeat: its store writes fail?",
                style(Tone::Bad),
            ));
        }
    }
    // The proxy's figures at the right of the first line, or at the end
    // of the third when the screen is too narrow for them beside the tabs.
    let proxy = Line::from(proxy_spans(app.traffic.view(app.now_ms)));
    let first = Line::from(first);
    let beside = first.width() + 2 + proxy.width() <= usize::from(area.width);
    let proxy_area = Rect {
        x: area.x + area.width.saturating_sub(proxy.width() as u16),
        width: (proxy.width() as u16).min(area.width),
        height: 1.min(area.height),
        ..area
    };
    if !beside {
        third.push(Span::raw("  "));
        third.extend(proxy.spans.clone());
    }
    let text = vec![first, Line::from(second), Line::from(third)];
    frame.render_widget(Paragraph::new(text), area);
    if beside {
        frame.render_widget(Paragraph::new(proxy), proxy_area);
    }
}

/// Requests per second through the proxy, and the share of them answered
/// with a 5xx status (see the help).
fn proxy_spans(view: ProxyView) -> Vec<Span<'static>> {
    let r = match view {
        ProxyView::Off => return vec![Span::styled("proxy off", style(Tone::Muted))],
        ProxyView::Measuring => return vec![Span::styled("proxy …", style(Tone::Muted))],
        ProxyView::Rate(r) => r,
    };
    let per_s = if r.requests_per_s < 100.0 {
        format!("{:.1}", r.requests_per_s)
    } else {
        format!("{:.0}", r.requests_per_s)
    };
    let mut spans = vec![Span::raw(format!("proxy {per_s} req/s"))];
    if let Some(share) = r.server_errors {
        let tone = if share > 0.05 {
            Tone::Bad
        } else if share > 0.0 {
            Tone::Warn
        } else {
            Tone::Good
        };
        spans.push(Span::raw(" "));
        spans.push(Span::styled(
            format!("{:.1}% 5xx", share * 100.0),
            style(tone),
        ));
    }
    spans
}
