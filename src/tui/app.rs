//! The dashboard's state and how it changes: a message in (a key, new
//! data, a tick), state updated, perhaps an effect out for the runtime to
//! carry out (a request to the applier, a log stream). No I/O here, so
//! every key is tested without a terminal.

use std::collections::VecDeque;
use std::time::Duration;

use ratatui::crossterm::event::{KeyCode, KeyEvent};
use regex::Regex;

use super::data::{Counts, DesiredPods, Snapshot};
use super::keymap::{Action, lookup};
use super::table::{self, Row, RowKey};
use super::traffic::Meter;
use crate::store::{LockInfo, PublishedPlan, RequestKind, RequestState, WriteHealth};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Screen {
    Nodes,
    Containers,
    Events,
    Logs,
    Describe,
    Plan,
    Volumes,
}

impl Screen {
    pub(crate) fn is_table(self) -> bool {
        matches!(self, Screen::Nodes | Screen::Containers | Screen::Events)
    }

    pub fn title(self) -> &'static str {
        match self {
            Screen::Nodes => "nodes",
            Screen::Containers => "containers",
            Screen::Events => "events",
            Screen::Logs => "logs",
            Screen::Describe => "describe",
            Screen::Plan => "plan",
            Screen::Volumes => "volumes",
        }
    }

    fn index(self) -> usize {
        match self {
            Screen::Nodes => 0,
            Screen::Containers => 1,
            Screen::Events => 2,
            Screen::Logs => 3,
            Screen::Describe => 4,
            Screen::Plan => 5,
            Screen::Volumes => 6,
        }
    }
}

/// Who applies: this process, or a daemon the dashboard is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    InProcess,
    Attached(LockInfo),
}

/// A tone for text; the view maps tones to named terminal colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tone {
    #[default]
    Plain,
    Good,
    Warn,
    Bad,
    Info,
    Muted,
}

/// The latest pass, of this process's operator or the daemon's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastPass {
    pub finished_ms: i64,
    pub took: Duration,
    pub actions: usize,
    pub failed: usize,
    pub error: Option<String>,
    /// Pods the plan could not place.
    pub unplaceable: usize,
    /// How the state store takes the operator's writes (known when it
    /// runs here).
    pub store: WriteHealth,
}

impl From<&PublishedPlan> for LastPass {
    fn from(p: &PublishedPlan) -> LastPass {
        LastPass {
            finished_ms: p.at,
            took: Duration::from_millis(p.took_ms),
            actions: p.applied,
            failed: p.failed,
            error: p.error.clone(),
            unplaceable: p.plan.unplaceable.len(),
            store: WriteHealth {
                ok_now: true,
                ..WriteHealth::default()
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    None,
    Filter(String),
    Command(String),
}

/// What the runtime should do for the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Quit,
    /// Ask the applier (this process's operator or the daemon) to act.
    Request {
        kind: RequestKind,
        node_id: Option<String>,
        container: Option<String>,
    },
    /// (Re)start streaming a container's logs; replaces any stream.
    Logs(LogSpec),
    StopLogs,
    Describe {
        seq: u64,
        node_id: String,
        container: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    pub seq: u64,
    pub node_id: String,
    pub container: String,
    /// Lines of history to start with; None: all.
    pub tail: Option<u32>,
    pub timestamps: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    pub question: String,
    pub effect: Effect,
}

/// Lines kept of a log stream.
pub(crate) const LOG_LINES: usize = 5_000;
const TAILS: [Option<u32>; 3] = [Some(100), Some(1000), None];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogView {
    pub spec: LogSpec,
    pub title: String,
    pub lines: VecDeque<String>,
    pub follow: bool,
    pub wrap: bool,
    /// Lines up from the end the view is scrolled (0 while following).
    pub scroll: usize,
    /// "streaming", or how it ended.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextView {
    pub title: String,
    pub text: String,
    pub scroll: usize,
}

pub struct App {
    pub fleet: String,
    pub mode: Mode,
    /// The API's URL, when the dashboard shows an operator elsewhere.
    pub remote: Option<String>,
    pub desired: DesiredPods,
    pub data: Snapshot,
    pub data_error: Option<String>,
    pub last_pass: Option<LastPass>,
    /// The last pass's plan: from this process's operator, or as the
    /// daemon published it in the store.
    pub plan: Option<PublishedPlan>,
    /// The proxy's counters as read: this process's proxy on each tick,
    /// or the daemon's from the store.
    pub traffic: Meter,
    pub now_ms: i64,
    pub screen: Screen,
    back: Vec<Screen>,
    selected: [usize; 7],
    /// Sort column (0-based) and descending, per table screen.
    sort: [Option<(usize, bool)>; 7],
    /// Per screen: a filter typed on one screen does not hide rows of another.
    filters: [Option<Regex>; 7],
    pub input: Input,
    pub input_error: Option<String>,
    pub confirm: Option<Confirm>,
    pub help: bool,
    pub notice: Option<(String, Tone, i64)>,
    pub logs: Option<LogView>,
    pub describe: Option<TextView>,
    plan_scroll: usize,
    volumes_scroll: usize,
    /// Requests this dashboard made, awaiting their outcome.
    asked: Vec<i64>,
    seq: u64,
    /// Rows a page moves, from the last drawn height.
    pub page: usize,
    pub quit: bool,
}

/// A notice stays this long.
const NOTICE_MS: i64 = 8_000;

impl App {
    pub fn new(fleet: String, mode: Mode, desired: DesiredPods, now_ms: i64) -> App {
        App {
            fleet,
            mode,
            remote: None,
            desired,
            data: Snapshot::default(),
            data_error: None,
            last_pass: None,
            plan: None,
            traffic: Meter::default(),
            now_ms,
            screen: Screen::Containers,
            back: Vec::new(),
            selected: [0; 7],
            sort: [None; 7],
            filters: Default::default(),
            input: Input::None,
            input_error: None,
            confirm: None,
            help: false,
            notice: None,
            logs: None,
            describe: None,
            plan_scroll: 0,
            volumes_scroll: 0,
            asked: Vec::new(),
            seq: 0,
            page: 10,
            quit: false,
        }
    }

    pub fn counts(&self) -> Counts {
        Counts::of(&self.data, &self.desired)
    }

    pub(crate) fn notify(&mut self, text: impl Into<String>, tone: Tone) {
        self.notice = Some((text.into(), tone, self.now_ms));
    }

    pub fn tick(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
        if matches!(&self.notice, Some((_, _, at)) if now_ms - at > NOTICE_MS) {
            self.notice = None;
        }
    }

    pub fn set_data(&mut self, data: Snapshot) {
        if let (Mode::Attached(_), Some(t)) = (&self.mode, data.traffic) {
            self.traffic.push(t);
        }
        self.data = data;
        self.data_error = None;
        // This process's operator reports its passes directly (`Msg::Pass`).
        if let Mode::Attached(_) = self.mode {
            self.plan = self.data.plan.clone();
            self.last_pass = self.plan.as_ref().map(LastPass::from);
        }
        let mut finished = Vec::new();
        for r in &self.data.requests {
            if self.asked.contains(&r.id)
                && matches!(r.state, RequestState::Done | RequestState::Failed)
            {
                let tone = if r.state == RequestState::Done {
                    Tone::Good
                } else {
                    Tone::Bad
                };
                finished.push((r.id, r.result.clone().unwrap_or_default(), tone));
            }
        }
        for (id, text, tone) in finished {
            self.asked.retain(|a| *a != id);
            self.notify(text, tone);
        }
        self.clamp();
    }

    /// The request was stored; its outcome shows when the applier is done.
    pub(crate) fn requested(&mut self, id: i64, what: &str) {
        self.asked.push(id);
        let who = match &self.mode {
            Mode::InProcess => "the operator".to_owned(),
            Mode::Attached(l) => format!("the {} (pid {})", l.role, l.pid),
        };
        self.notify(format!("{what}: asked {who}"), Tone::Info);
    }

    pub(crate) fn log_lines(&mut self, seq: u64, lines: Vec<String>) {
        let Some(view) = self.logs.as_mut().filter(|v| v.spec.seq == seq) else {
            return;
        };
        for l in lines {
            if view.lines.len() == LOG_LINES {
                view.lines.pop_front();
            }
            view.lines.push_back(l);
            if !view.follow {
                // Keep the same lines in view while new ones arrive.
                view.scroll += 1;
            }
        }
    }

    pub(crate) fn log_ended(&mut self, seq: u64, why: String) {
        if let Some(view) = self.logs.as_mut().filter(|v| v.spec.seq == seq) {
            view.status = why;
        }
    }

    pub(crate) fn described(&mut self, seq: u64, text: String) {
        if self.seq == seq
            && let Some(d) = self.describe.as_mut()
        {
            d.text = text;
        }
    }

    /// The current table's rows, filtered and sorted as shown.
    pub fn rows(&self) -> Vec<Row> {
        self.rows_of(self.screen)
    }

    /// The current screen's filter.
    pub fn filter(&self) -> Option<&Regex> {
        self.filters[self.screen.index()].as_ref()
    }

    fn set_filter(&mut self, re: Option<Regex>) {
        self.filters[self.screen.index()] = re;
    }

    fn rows_of(&self, screen: Screen) -> Vec<Row> {
        let mut rows = match screen {
            Screen::Nodes => table::node_rows(&self.data, self.now_ms),
            Screen::Containers => table::container_rows(&self.data, &self.desired, self.now_ms),
            Screen::Events => table::event_rows(&self.data, self.now_ms),
            _ => return Vec::new(),
        };
        if let Some(re) = &self.filters[screen.index()] {
            rows.retain(|r| r.cells.iter().any(|c| re.is_match(&c.text)));
        }
        if let Some((col, desc)) = self.sort[screen.index()] {
            table::sort(&mut rows, col, desc);
        }
        rows
    }

    pub(crate) fn sort_of(&self, screen: Screen) -> Option<(usize, bool)> {
        self.sort[screen.index()]
    }

    pub(crate) fn selected(&self) -> usize {
        self.selected[self.screen.index()]
    }

    pub(crate) fn selected_row(&self) -> Option<Row> {
        self.rows().into_iter().nth(self.selected())
    }

    /// The selected row's container: node id, name, app/service/instance.
    fn selected_container(&self) -> Option<(String, String, String)> {
        match self.selected_row()?.key {
            RowKey::Container {
                node_id,
                name,
                label,
            } => Some((node_id, name, label)),
            _ => None,
        }
    }

    fn clamp(&mut self) {
        for s in [Screen::Nodes, Screen::Containers, Screen::Events] {
            let n = self.rows_of(s).len();
            let sel = &mut self.selected[s.index()];
            *sel = (*sel).min(n.saturating_sub(1));
        }
    }

    pub(crate) fn plan_scroll(&self) -> usize {
        self.plan_scroll
    }

    pub(crate) fn volumes_scroll(&self) -> usize {
        self.volumes_scroll
    }

    fn go(&mut self, screen: Screen) {
        if screen != self.screen {
            self.back.push(self.screen);
            // Back never grows without end: only the way here matters.
            if self.back.len() > 20 {
                self.back.remove(0);
            }
            self.screen = screen;
        }
    }

    /// Leaves the current screen; what leaving a logs view stops.
    fn go_back(&mut self) -> Option<Effect> {
        let left = self.screen;
        self.screen = self.back.pop().unwrap_or(Screen::Containers);
        (left == Screen::Logs).then_some(Effect::StopLogs)
    }

    pub(crate) fn on_key(&mut self, key: KeyEvent) -> Option<Effect> {
        if self.help {
            self.help = false;
            return None;
        }
        if let Some(confirm) = self.confirm.take() {
            return match key.code {
                KeyCode::Char('y') | KeyCode::Enter => Some(confirm.effect),
                _ => {
                    self.notify("cancelled", Tone::Muted);
                    None
                }
            };
        }
        if self.input != Input::None {
            return self.on_input_key(key);
        }
        let action = lookup(&key, self.screen)?;
        self.act(action, key)
    }

    fn on_input_key(&mut self, key: KeyEvent) -> Option<Effect> {
        let text = match &mut self.input {
            Input::Filter(t) | Input::Command(t) => t,
            Input::None => return None,
        };
        match key.code {
            KeyCode::Esc => {
                if matches!(self.input, Input::Filter(_)) {
                    self.set_filter(None);
                }
                self.input = Input::None;
                self.input_error = None;
                self.clamp();
                None
            }
            KeyCode::Enter => {
                let input = std::mem::replace(&mut self.input, Input::None);
                match input {
                    Input::Command(cmd) => self.run_command(cmd.trim()),
                    Input::Filter(f) => {
                        // An invalid pattern keeps the last good filter.
                        if self.input_error.take().is_some() {
                            self.notify(format!("not a valid regex: {f}"), Tone::Bad);
                        }
                        None
                    }
                    Input::None => None,
                }
            }
            KeyCode::Backspace => {
                text.pop();
                self.input_changed();
                None
            }
            KeyCode::Char(c) => {
                text.push(c);
                self.input_changed();
                None
            }
            _ => None,
        }
    }

    /// A filter applies as it is typed.
    fn input_changed(&mut self) {
        let Input::Filter(text) = &self.input else {
            return;
        };
        if text.is_empty() {
            self.set_filter(None);
            self.input_error = None;
        } else {
            // Smart case: all lower case matches either case.
            let pattern = if text.chars().any(char::is_uppercase) {
                text.clone()
            } else {
                format!("(?i){text}")
            };
            match Regex::new(&pattern) {
                Ok(re) => {
                    self.set_filter(Some(re));
                    self.input_error = None;
                }
                Err(_) => self.input_error = Some("not a valid regex yet".into()),
            }
        }
        self.selected[self.screen.index()] = 0;
        self.clamp();
    }

    fn run_command(&mut self, cmd: &str) -> Option<Effect> {
        match cmd {
            "q" | "quit" | "q!" => {
                self.quit = true;
                Some(Effect::Quit)
            }
            "nodes" | "no" | "node" => self.switch(Screen::Nodes),
            "pods" | "po" | "pod" | "containers" | "co" => self.switch(Screen::Containers),
            "events" | "ev" => self.switch(Screen::Events),
            "plan" => self.switch(Screen::Plan),
            "volumes" | "vol" | "volume" => self.switch(Screen::Volumes),
            "" => None,
            other => {
                self.notify(
                    format!(
                        "unknown command :{other} (try :nodes :pods :events :plan :volumes :q)"
                    ),
                    Tone::Bad,
                );
                None
            }
        }
    }

    /// Goes to a top-level screen; leaving logs stops them.
    fn switch(&mut self, to: Screen) -> Option<Effect> {
        let stop = (self.screen == Screen::Logs && to != Screen::Logs).then_some(Effect::StopLogs);
        self.go(to);
        self.clamp();
        stop
    }

    fn act(&mut self, action: Action, key: KeyEvent) -> Option<Effect> {
        match action {
            Action::Quit => {
                self.quit = true;
                Some(Effect::Quit)
            }
            Action::Help => {
                self.help = true;
                None
            }
            Action::Back => {
                if self.filter().is_some() && self.screen.is_table() {
                    self.set_filter(None);
                    self.clamp();
                    None
                } else if self.screen.is_table() && self.back.is_empty() {
                    None
                } else {
                    self.go_back()
                }
            }
            Action::Filter => {
                let current = self.filter().map_or(String::new(), |r| {
                    r.as_str().trim_start_matches("(?i)").to_owned()
                });
                self.input = Input::Filter(current);
                None
            }
            Action::Command => {
                self.input = Input::Command(String::new());
                None
            }
            Action::Up => self.move_by(-1),
            Action::Down => self.move_by(1),
            Action::PageUp => self.move_by(-(self.page as isize)),
            Action::PageDown => self.move_by(self.page as isize),
            Action::Top => self.move_by(isize::MIN / 2),
            Action::Bottom => self.move_by(isize::MAX / 2),
            Action::Sort => {
                let KeyCode::Char(c) = key.code else {
                    return None;
                };
                let col = c.to_digit(10).unwrap_or(1).saturating_sub(1) as usize;
                if col >= table::columns(self.screen).len() {
                    return None;
                }
                let slot = &mut self.sort[self.screen.index()];
                *slot = match *slot {
                    Some((c, desc)) if c == col => Some((col, !desc)),
                    _ => Some((col, false)),
                };
                None
            }
            Action::Next => {
                let to = match self.screen {
                    Screen::Nodes => Screen::Containers,
                    Screen::Containers => Screen::Events,
                    _ => Screen::Nodes,
                };
                self.switch(to)
            }
            Action::ToNodes => self.switch(Screen::Nodes),
            Action::ToEvents => self.switch(Screen::Events),
            Action::ToPlan => self.switch(Screen::Plan),
            Action::ToContainers => {
                // From a node: its containers.
                if let Some(RowKey::Node { name, .. }) = self.selected_row().map(|r| r.key)
                    && let Ok(re) = Regex::new(&regex::escape(&name))
                {
                    self.filters[Screen::Containers.index()] = Some(re);
                    self.selected[Screen::Containers.index()] = 0;
                }
                self.switch(Screen::Containers)
            }
            Action::Reconcile => Some(Effect::Request {
                kind: RequestKind::Reconcile,
                node_id: None,
                container: None,
            }),
            Action::Logs => {
                let (node_id, name, label) = self.selected_container()?;
                self.seq += 1;
                let spec = LogSpec {
                    seq: self.seq,
                    node_id,
                    container: name,
                    tail: TAILS[0],
                    timestamps: false,
                };
                self.logs = Some(LogView {
                    spec: spec.clone(),
                    title: label,
                    lines: VecDeque::new(),
                    follow: true,
                    wrap: false,
                    scroll: 0,
                    status: "connecting".into(),
                });
                self.go(Screen::Logs);
                Some(Effect::Logs(spec))
            }
            Action::Describe => {
                let (node_id, name, label) = self.selected_container()?;
                self.seq += 1;
                self.describe = Some(TextView {
                    title: label,
                    text: "inspecting…".into(),
                    scroll: 0,
                });
                self.go(Screen::Describe);
                Some(Effect::Describe {
                    seq: self.seq,
                    node_id,
                    container: name,
                })
            }
            Action::Restart => {
                let (node_id, name, label) = self.selected_container()?;
                self.confirm = Some(Confirm {
                    question: format!("Restart {label} ({name})?"),
                    effect: Effect::Request {
                        kind: RequestKind::Restart,
                        node_id: Some(node_id),
                        container: Some(name),
                    },
                });
                None
            }
            Action::Drain => {
                let RowKey::Node { id, name } = self.selected_row()?.key else {
                    return None;
                };
                self.confirm = Some(Confirm {
                    question: format!("Drain {name} ({id}): move its pods elsewhere?"),
                    effect: Effect::Request {
                        kind: RequestKind::Drain,
                        node_id: Some(id),
                        container: None,
                    },
                });
                None
            }
            Action::Follow => {
                let v = self.logs.as_mut()?;
                v.follow = !v.follow;
                if v.follow {
                    v.scroll = 0;
                }
                None
            }
            Action::Wrap => {
                let v = self.logs.as_mut()?;
                v.wrap = !v.wrap;
                None
            }
            Action::Timestamps => {
                let v = self.logs.as_mut()?;
                v.spec.timestamps = !v.spec.timestamps;
                self.restart_logs()
            }
            Action::Tail => {
                let v = self.logs.as_mut()?;
                let i = TAILS.iter().position(|t| *t == v.spec.tail).unwrap_or(0);
                v.spec.tail = TAILS[(i + 1) % TAILS.len()];
                self.restart_logs()
            }
        }
    }

    /// A new stream with the view's settings, from an empty view.
    fn restart_logs(&mut self) -> Option<Effect> {
        self.seq += 1;
        let v = self.logs.as_mut()?;
        v.spec.seq = self.seq;
        v.lines.clear();
        v.scroll = 0;
        v.status = "connecting".into();
        Some(Effect::Logs(v.spec.clone()))
    }

    fn move_by(&mut self, delta: isize) -> Option<Effect> {
        match self.screen {
            Screen::Logs => {
                let v = self.logs.as_mut()?;
                let max = v.lines.len().saturating_sub(1);
                v.scroll = v.scroll.saturating_add_signed(-delta).min(max);
                v.follow = v.scroll == 0;
            }
            Screen::Describe => {
                let v = self.describe.as_mut()?;
                v.scroll = v.scroll.saturating_add_signed(delta);
            }
            Screen::Plan => self.plan_scroll = self.plan_scroll.saturating_add_signed(delta),
            Screen::Volumes => {
                self.volumes_scroll = self.volumes_scroll.saturating_add_signed(delta);
            }
            _ => {
                let n = self.rows().len();
                let sel = &mut self.selected[self.screen.index()];
                *sel = sel.saturating_add_signed(delta).min(n.saturating_sub(1));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::data::fixtures::{NOW, desired, snapshot};
    use super::*;
    use ratatui::crossterm::event::KeyModifiers;

    fn app() -> App {
        let mut a = App::new("lab".into(), Mode::InProcess, desired(), NOW);
        a.set_data(snapshot());
        a
    }

    fn press(a: &mut App, keys: &str) -> Vec<Effect> {
        keys.chars()
            .filter_map(|c| a.on_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)))
            .collect()
    }

    fn code(a: &mut App, c: KeyCode) -> Option<Effect> {
        a.on_key(KeyEvent::new(c, KeyModifiers::NONE))
    }

    fn first_cells(a: &App) -> Vec<String> {
        a.rows().iter().map(|r| r.cells[0].text.clone()).collect()
    }

    #[test]
    fn filter_is_a_regex_applied_as_typed_and_esc_clears_it() {
        let mut a = app();
        assert_eq!(a.rows().len(), 4);
        press(&mut a, "/");
        press(&mut a, "^(shop|wiki)");
        assert_eq!(first_cells(&a), ["shop/web/0", "wiki/web/0"]);
        // Half-typed patterns keep the last good filter.
        press(&mut a, "[");
        assert!(a.input_error.is_some());
        assert_eq!(a.rows().len(), 2);
        code(&mut a, KeyCode::Backspace);
        code(&mut a, KeyCode::Enter);
        assert_eq!(a.input, Input::None);
        assert_eq!(a.rows().len(), 2);
        // Lower case matches either case; cells other than the first count.
        press(&mut a, "/");
        for _ in 0..20 {
            code(&mut a, KeyCode::Backspace);
        }
        press(&mut a, "UNHEALTHY");
        assert!(a.rows().is_empty());
        for _ in 0..9 {
            code(&mut a, KeyCode::Backspace);
        }
        press(&mut a, "unhealthy");
        assert_eq!(first_cells(&a), ["shop/web/0"]);
        code(&mut a, KeyCode::Enter);
        code(&mut a, KeyCode::Esc);
        assert_eq!(a.rows().len(), 4);
    }

    #[test]
    fn each_screen_keeps_its_own_filter() {
        let mut a = app();
        press(&mut a, "/");
        press(&mut a, "shop");
        code(&mut a, KeyCode::Enter);
        assert_eq!(a.rows().len(), 1);
        press(&mut a, "l");
        assert_eq!(a.screen, Screen::Logs);
        assert!(
            a.filter().is_none(),
            "logs are not filtered by the pods' filter"
        );
        code(&mut a, KeyCode::Esc);
        press(&mut a, ":");
        press(&mut a, "nodes");
        code(&mut a, KeyCode::Enter);
        assert_eq!(a.rows().len(), 3);
        press(&mut a, ":");
        press(&mut a, "pods");
        code(&mut a, KeyCode::Enter);
        assert_eq!(first_cells(&a), ["shop/web/0"]);
    }

    #[test]
    fn digits_sort_by_column_and_again_reverse() {
        let mut a = app();
        press(&mut a, ":");
        press(&mut a, "nodes");
        code(&mut a, KeyCode::Enter);
        assert_eq!(a.screen, Screen::Nodes);
        // Column 1 is the name.
        press(&mut a, "1");
        assert_eq!(first_cells(&a), ["node1", "node2", "node3"]);
        press(&mut a, "1");
        assert_eq!(first_cells(&a), ["node3", "node2", "node1"]);
        assert_eq!(a.sort_of(Screen::Nodes), Some((0, true)));
        // A column past the last does nothing (events have five).
        press(&mut a, ":");
        press(&mut a, "events");
        code(&mut a, KeyCode::Enter);
        press(&mut a, "9");
        assert_eq!(a.sort_of(Screen::Events), None);
        assert_eq!(a.sort_of(Screen::Nodes), Some((0, true)));
    }

    #[test]
    fn uptime_sorts_by_time_not_text() {
        let mut a = app();
        let mut data = snapshot();
        data.containers[0].started_at = Some(NOW - 9_000); // 9s
        data.containers[1].started_at = Some(NOW - 300_000); // 5m
        data.containers[2].started_at = Some(NOW - 50_000); // 50s
        a.set_data(data);
        let up = table::columns(Screen::Containers)
            .iter()
            .position(|c| c.title == "UP")
            .expect("UP column");
        press(&mut a, &(up + 1).to_string());
        let order: Vec<_> = a.rows().iter().map(|r| r.cells[up].text.clone()).collect();
        // Not running sorts last.
        assert_eq!(order, ["9s", "50s", "5m", "-"]);
    }

    #[test]
    fn commands_switch_screens_and_esc_goes_back() {
        let mut a = app();
        for (cmd, screen) in [
            ("nodes", Screen::Nodes),
            ("events", Screen::Events),
            ("plan", Screen::Plan),
            ("pods", Screen::Containers),
        ] {
            press(&mut a, ":");
            press(&mut a, cmd);
            code(&mut a, KeyCode::Enter);
            assert_eq!(a.screen, screen, ":{cmd}");
        }
        code(&mut a, KeyCode::Esc);
        assert_eq!(a.screen, Screen::Plan);
        press(&mut a, ":");
        press(&mut a, "bogus");
        code(&mut a, KeyCode::Enter);
        assert!(
            a.notice
                .as_ref()
                .is_some_and(|n| n.0.contains("unknown command :bogus"))
        );
        press(&mut a, ":");
        press(&mut a, "q");
        assert_eq!(code(&mut a, KeyCode::Enter), Some(Effect::Quit));
        assert!(a.quit);
    }

    #[test]
    fn restart_asks_first_and_only_yes_sends_it() {
        let mut a = app();
        press(&mut a, "j");
        assert_eq!(press(&mut a, "x"), []);
        let q = a.confirm.as_ref().expect("dialog").question.clone();
        assert!(q.contains("blog/web/0"), "{q}");
        assert_eq!(press(&mut a, "n"), []);
        assert!(a.confirm.is_none());
        press(&mut a, "x");
        assert_eq!(
            press(&mut a, "y"),
            [Effect::Request {
                kind: RequestKind::Restart,
                node_id: Some("i-0aaa".into()),
                container: Some("prism-blog-web-0".into()),
            }]
        );
    }

    #[test]
    fn drain_is_a_node_action_with_a_dialog() {
        let mut a = app();
        assert_eq!(press(&mut a, "D"), []);
        assert!(a.confirm.is_none(), "no drain on containers");
        press(&mut a, ":");
        press(&mut a, "nodes");
        code(&mut a, KeyCode::Enter);
        press(&mut a, "jD");
        assert!(
            a.confirm
                .as_ref()
                .expect("dialog")
                .question
                .contains("node2")
        );
        assert_eq!(
            code(&mut a, KeyCode::Enter),
            Some(Effect::Request {
                kind: RequestKind::Drain,
                node_id: Some("i-0bbb".into()),
                container: None,
            })
        );
    }

    #[test]
    fn enter_on_a_node_shows_its_containers() {
        let mut a = app();
        press(&mut a, ":");
        press(&mut a, "nodes");
        code(&mut a, KeyCode::Enter);
        press(&mut a, "G");
        code(&mut a, KeyCode::Enter);
        assert_eq!(a.screen, Screen::Containers);
        assert_eq!(first_cells(&a), ["shop/web/0", "wiki/web/0"]);
        code(&mut a, KeyCode::Esc);
        assert_eq!(a.rows().len(), 4, "esc clears the filter first");
        code(&mut a, KeyCode::Esc);
        assert_eq!(a.screen, Screen::Nodes);
    }

    #[test]
    fn logs_stream_and_stop_when_left() {
        let mut a = app();
        let effects = press(&mut a, "l");
        let Some(Effect::Logs(spec)) = effects.first() else {
            panic!("{effects:?}");
        };
        assert_eq!(spec.container, "prism-blog-queue-0");
        assert_eq!(spec.tail, Some(100));
        assert_eq!(a.screen, Screen::Logs);
        a.log_lines(spec.seq, vec!["one".into(), "two".into()]);
        a.log_lines(spec.seq + 99, vec!["stale".into()]);
        assert_eq!(a.logs.as_ref().expect("view").lines, ["one", "two"]);
        // Scrolling up stops following; new lines keep the view still.
        press(&mut a, "k");
        let v = a.logs.as_ref().expect("view");
        assert!(!v.follow);
        assert_eq!(v.scroll, 1);
        a.log_lines(spec.seq, vec!["three".into()]);
        assert_eq!(a.logs.as_ref().expect("view").scroll, 2);
        press(&mut a, "f");
        assert_eq!(a.logs.as_ref().expect("view").scroll, 0);
        // Timestamps need a new stream.
        let again = press(&mut a, "t");
        let Some(Effect::Logs(s2)) = again.first() else {
            panic!("{again:?}");
        };
        assert!(s2.timestamps && s2.seq > spec.seq);
        assert_eq!(press(&mut a, "T").len(), 1);
        assert_eq!(a.logs.as_ref().expect("view").spec.tail, Some(1000));
        assert_eq!(code(&mut a, KeyCode::Esc), Some(Effect::StopLogs));
        assert_eq!(a.screen, Screen::Containers);
    }

    #[test]
    fn a_request_outcome_becomes_a_notice() {
        let mut a = app();
        a.requested(8, "restart blog/web/0");
        assert!(
            a.notice
                .as_ref()
                .is_some_and(|n| n.0.contains("asked the operator"))
        );
        let mut data = snapshot();
        data.requests[0].id = 8;
        data.requests[0].state = RequestState::Failed;
        data.requests[0].result = Some("no such container".into());
        a.set_data(data);
        let (text, tone, _) = a.notice.clone().expect("notice");
        assert_eq!((text.as_str(), tone), ("no such container", Tone::Bad));
        a.tick(NOW + 60_000);
        assert!(a.notice.is_none());
    }

    #[test]
    fn selection_stays_in_range_when_rows_go() {
        let mut a = app();
        press(&mut a, "G");
        assert_eq!(a.selected(), 3);
        let mut data = snapshot();
        data.containers.truncate(1);
        a.set_data(data);
        assert_eq!(a.selected(), 0);
        press(&mut a, "jjj");
        assert_eq!(a.selected(), 0);
    }

    #[test]
    fn help_opens_and_any_key_closes_it() {
        let mut a = app();
        press(&mut a, "?");
        assert!(a.help);
        assert_eq!(press(&mut a, "q"), []);
        assert!(!a.help && !a.quit);
    }
}
