//! Rendering on ratatui's TestBackend, compared with insta snapshots in
//! src/tui/snapshots/. A changed screen fails the test; `cargo insta
//! review` (or INSTA_UPDATE=always, then the diff) accepts the new one.

use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::{Color, Modifier};

use crate::store::{LockInfo, WriteHealth};
use crate::tui::app::{App, LastPass, Mode};
use crate::tui::data::Snapshot;
use crate::tui::data::fixtures::{NOW, desired, published_plan, snapshot};

fn app() -> App {
    let mut a = App::new("lab".into(), Mode::InProcess, desired(), NOW);
    a.set_data(snapshot());
    a.last_pass = Some(LastPass {
        finished_ms: NOW - 3_000,
        took: Duration::from_millis(1_250),
        actions: 2,
        failed: 0,
        error: None,
        unplaceable: 1,
        store: WriteHealth {
            ok_now: true,
            ..WriteHealth::default()
        },
    });
    a.plan = Some(published_plan());
    a
}

fn render(app: &mut App, w: u16, h: u16) -> Buffer {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    t.draw(|f| super::draw(f, app)).expect("draw");
    t.backend().buffer().clone()
}

fn text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in 0..area.height {
        let line: String = (0..area.width)
            .map(|x| buf[(x, y)].symbol().to_owned())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn check_snapshot(name: &str, buf: &Buffer) {
    insta::with_settings!({
        snapshot_path => "../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(name, text(buf));
    });
}

/// The cell where `needle` starts on the screen.
fn find(buf: &Buffer, needle: &str) -> (u16, u16) {
    let lines = text(buf);
    for (y, line) in lines.lines().enumerate() {
        if let Some(byte) = line.find(needle) {
            let x = line[..byte].chars().count();
            return (x as u16, y as u16);
        }
    }
    panic!("{needle:?} not on screen:\n{lines}");
}

fn key(app: &mut App, c: char) {
    app.on_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
}

fn command(app: &mut App, cmd: &str) {
    key(app, ':');
    for c in cmd.chars() {
        key(app, c);
    }
    app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
}

#[test]
fn containers_at_80x24() {
    let mut a = app();
    check_snapshot("containers_80x24", &render(&mut a, 80, 24));
}

#[test]
fn containers_at_120x40() {
    let mut a = app();
    check_snapshot("containers_120x40", &render(&mut a, 120, 40));
}

#[test]
fn nodes_at_80x24() {
    let mut a = app();
    command(&mut a, "nodes");
    check_snapshot("nodes_80x24", &render(&mut a, 80, 24));
}

#[test]
fn events_at_120x40() {
    let mut a = app();
    command(&mut a, "events");
    check_snapshot("events_120x40", &render(&mut a, 120, 40));
}

#[test]
fn help_fits_80x24() {
    let mut a = app();
    key(&mut a, '?');
    check_snapshot("help_80x24", &render(&mut a, 80, 24));
}

#[test]
fn restart_dialog() {
    let mut a = app();
    key(&mut a, 'x');
    check_snapshot("restart_dialog_80x24", &render(&mut a, 80, 24));
}

fn daemon() -> LockInfo {
    LockInfo {
        role: "daemon".into(),
        pid: 4242,
        host: "ops1".into(),
        acquired_at: NOW - 3_600_000,
        heartbeat_at: NOW - 2_000,
        ttl_ms: 60_000,
        generation: 1,
    }
}

#[test]
fn plan_attached_to_a_daemon() {
    let mut a = App::new("lab".into(), Mode::Attached(daemon()), desired(), NOW);
    let mut snap = snapshot();
    snap.lock = Some(daemon());
    snap.plan = Some(published_plan());
    a.set_data(snap);
    command(&mut a, "plan");
    let buf = render(&mut a, 100, 30);
    check_snapshot("plan_attached_100x30", &buf);
    // The pod it could not place stands out; the header has the pass too.
    assert_eq!(buf[find(&buf, "! cannot place")].fg, Color::Red);
    let screen = text(&buf);
    assert!(
        screen.contains("plan of the last pass, 12s ago"),
        "{screen}"
    );
    assert!(
        screen.contains("12s ago, took 840ms: 3 actions ok"),
        "{screen}"
    );
    // Its age moves with the clock.
    a.tick(NOW + 60_000);
    let screen = text(&render(&mut a, 100, 30));
    assert!(
        screen.contains("plan of the last pass, 72s ago"),
        "{screen}"
    );
}

#[test]
fn plan_attached_before_the_daemon_published_one() {
    let mut a = App::new("lab".into(), Mode::Attached(daemon()), desired(), NOW);
    a.set_data(Snapshot {
        lock: Some(daemon()),
        ..snapshot()
    });
    command(&mut a, "plan");
    let screen = text(&render(&mut a, 100, 30));
    assert!(screen.contains("has not published a plan yet"), "{screen}");
    // The header falls back to the lock's heartbeat.
    assert!(screen.contains("by it; heartbeat 2s ago"), "{screen}");
}

#[test]
fn plan_of_a_failed_pass() {
    let mut a = app();
    a.plan = Some(crate::store::PublishedPlan {
        error: Some("discovery: timed out".into()),
        plan: Default::default(),
        ..published_plan()
    });
    command(&mut a, "plan");
    let buf = render(&mut a, 100, 30);
    let (x, y) = find(
        &buf,
        "the pass failed before planning: discovery: timed out",
    );
    assert_eq!(buf[(x, y)].fg, Color::Red);
    assert!(!text(&buf).contains("cannot place"));
}

#[test]
fn volumes_screen_marks_the_kept_ones() {
    let mut a = app();
    command(&mut a, "volumes");
    let buf = render(&mut a, 120, 20);
    let screen = text(&buf);
    assert!(screen.contains("blog/0  storage  durable  10G"), "{screen}");
    // Node ids read as names.
    assert!(screen.contains("node1"), "{screen}");
    let (x, y) = find(&buf, "wiki/1");
    assert_eq!(buf[(x, y)].fg, Color::Yellow);
    assert!(
        screen.contains("`prism volumes delete APP` deletes them"),
        "{screen}"
    );
    check_snapshot("volumes", &buf);
}

#[test]
fn health_and_state_colours() {
    let mut a = app();
    let buf = render(&mut a, 120, 40);
    let fg = |needle: &str| buf[find(&buf, needle)].fg;
    assert_eq!(fg("unhealthy"), Color::Red);
    assert_eq!(fg("healthy "), Color::Green);
    assert_eq!(fg("starting"), Color::Yellow);
    assert_eq!(fg("exited"), Color::Red);
    command(&mut a, "nodes");
    let buf = render(&mut a, 120, 40);
    let (x, y) = find(&buf, "lost (unreachable)");
    assert_eq!(buf[(x, y)].fg, Color::Red);
    // The selected row (node1, the first) is reversed, whatever its colours.
    let (x, y) = find(&buf, "node1 ");
    assert!(buf[(x, y)].modifier.contains(Modifier::REVERSED));
    // No RGB or indexed greys anywhere: they vanish on some themes.
    for cell in buf.content() {
        assert!(
            !matches!(cell.fg, Color::Rgb(..) | Color::Indexed(_)),
            "{cell:?}"
        );
    }
}

#[test]
fn resizing_redraws_cleanly() {
    let mut a = app();
    let mut t = Terminal::new(TestBackend::new(120, 40)).expect("terminal");
    t.draw(|f| super::draw(f, &mut a)).expect("draw");
    t.backend_mut().resize(80, 24);
    t.resize(ratatui::layout::Rect::new(0, 0, 80, 24))
        .expect("resize");
    t.draw(|f| super::draw(f, &mut a)).expect("draw");
    assert_eq!(
        text(t.backend().buffer()),
        text(&render(&mut app(), 80, 24))
    );
}

#[test]
fn logs_follow_the_end() {
    let mut a = app();
    key(&mut a, 'l');
    let seq = a.logs.as_ref().expect("view").spec.seq;
    a.log_lines(seq, (1..=50).map(|i| format!("line {i}")).collect());
    let buf = render(&mut a, 80, 24);
    let screen = text(&buf);
    assert!(screen.contains("line 50"), "{screen}");
    assert!(!screen.contains("line 1\n"), "{screen}");
    // Filtering logs keeps the matching lines only.
    key(&mut a, '/');
    for c in "line 1[0-9]$".chars() {
        key(&mut a, c);
    }
    let screen = text(&render(&mut a, 80, 24));
    assert!(
        screen.contains("line 19") && !screen.contains("line 50"),
        "{screen}"
    );
}

/// Readings of the proxy's counters: 10 requests a second over the last
/// 5 s, `errors` of them answered 5xx.
fn with_traffic(a: &mut App, errors: u64) {
    use crate::store::ProxyTraffic;
    for (at_ms, requests, server_errors) in [(NOW - 5_000, 100, 0), (NOW, 150, errors)] {
        a.traffic.push(ProxyTraffic {
            at_ms,
            requests,
            server_errors,
        });
    }
}

#[test]
fn proxy_figures_at_80x24() {
    let mut a = app();
    with_traffic(&mut a, 0);
    let buf = render(&mut a, 80, 24);
    check_snapshot("proxy_80x24", &buf);
    let first = text(&buf).lines().next().expect("a line").to_owned();
    assert!(first.ends_with("proxy 10.0 req/s 0.0% 5xx"), "{first}");
    assert_eq!(buf[find(&buf, "0.0% 5xx")].fg, Color::Green);
}

#[test]
fn proxy_errors_turn_red_past_5_percent() {
    let mut a = app();
    with_traffic(&mut a, 2);
    let buf = render(&mut a, 80, 24);
    assert_eq!(buf[find(&buf, "4.0% 5xx")].fg, Color::Yellow);
    let mut a = app();
    with_traffic(&mut a, 5);
    let buf = render(&mut a, 80, 24);
    assert_eq!(buf[find(&buf, "10.0% 5xx")].fg, Color::Red);
}

#[test]
fn no_proxy_says_so_and_stale_figures_are_not_shown() {
    let mut a = app();
    let screen = text(&render(&mut a, 80, 24));
    assert!(
        screen
            .lines()
            .next()
            .is_some_and(|l| l.ends_with("proxy off")),
        "{screen}"
    );
    // A daemon that stopped writing its figures: they go, "off" comes back.
    with_traffic(&mut a, 0);
    a.tick(NOW + 60_000);
    let screen = text(&render(&mut a, 80, 24));
    assert!(
        screen.contains("proxy off") && !screen.contains("req/s"),
        "{screen}"
    );
}

#[test]
fn proxy_figures_move_to_the_third_line_when_the_tabs_need_the_room() {
    let mut a = app();
    a.fleet = "a-fleet-with-a-rather-long-name".into();
    with_traffic(&mut a, 0);
    let screen = text(&render(&mut a, 100, 24));
    let lines: Vec<&str> = screen.lines().collect();
    assert!(!lines[0].contains("proxy"), "{screen}");
    assert!(lines[0].contains("plan"), "{screen}");
    assert!(lines[2].ends_with("proxy 10.0 req/s 0.0% 5xx"), "{screen}");
}

#[test]
fn attached_the_figures_come_from_the_store() {
    use crate::store::{LockInfo, ProxyTraffic};
    let lock = LockInfo {
        role: "daemon".into(),
        pid: 42,
        host: "box".into(),
        acquired_at: NOW - 60_000,
        heartbeat_at: NOW - 1_000,
        ttl_ms: 60_000,
        generation: 1,
    };
    let mut a = App::new("lab".into(), Mode::Attached(lock), desired(), NOW);
    for (at_ms, requests) in [(NOW - 2_000, 10), (NOW, 16)] {
        let mut data = snapshot();
        data.traffic = Some(ProxyTraffic {
            at_ms,
            requests,
            server_errors: 0,
        });
        a.set_data(data);
    }
    let screen = text(&render(&mut a, 80, 24));
    assert!(screen.contains("proxy 3.0 req/s 0.0% 5xx"), "{screen}");
    // In-process, the store's row is some daemon's from before: ignored.
    let mut a = app();
    let mut data = snapshot();
    data.traffic = Some(ProxyTraffic {
        at_ms: NOW,
        requests: 5,
        server_errors: 0,
    });
    a.set_data(data);
    assert!(text(&render(&mut a, 80, 24)).contains("proxy off"));
}
