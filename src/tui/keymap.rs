//! Every key the dashboard knows, in one table: dispatch looks keys up
//! here and the `?` help is drawn from it, so the two cannot disagree.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::Screen;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    Help,
    Back,
    Filter,
    Command,
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    /// Sort by the column of this number (1-based); again reverses.
    Sort,
    Logs,
    Describe,
    Reconcile,
    Restart,
    Drain,
    Next,
    ToNodes,
    ToContainers,
    ToEvents,
    ToPlan,
    Follow,
    Wrap,
    Timestamps,
    Tail,
}

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Everywhere,
    /// Nodes, Containers and Events.
    Tables,
    Screen(Screen),
}

impl Scope {
    pub fn covers(self, screen: Screen) -> bool {
        match self {
            Scope::Everywhere => true,
            Scope::Tables => screen.is_table(),
            Scope::Screen(s) => s == screen,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Scope::Everywhere => "",
            Scope::Tables => "",
            Scope::Screen(Screen::Containers) => "pods",
            Scope::Screen(s) => s.title(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keys {
    Char(char),
    Ctrl(char),
    Code(KeyCode),
    /// Any of 1 to 9.
    Digit,
}

impl Keys {
    fn matches(self, key: &KeyEvent) -> bool {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match (self, key.code) {
            (Keys::Ctrl(c), KeyCode::Char(k)) => ctrl && k == c,
            (_, _) if ctrl => false,
            (Keys::Char(c), KeyCode::Char(k)) => k == c,
            (Keys::Digit, KeyCode::Char(k)) => ('1'..='9').contains(&k),
            (Keys::Code(c), k) => c == k,
            _ => false,
        }
    }

    pub fn label(self) -> String {
        match self {
            Keys::Char(c) => c.to_string(),
            Keys::Ctrl(c) => format!("ctrl-{c}"),
            Keys::Digit => "1-9".into(),
            Keys::Code(KeyCode::Esc) => "esc".into(),
            Keys::Code(KeyCode::Up) => "↑".into(),
            Keys::Code(KeyCode::Down) => "↓".into(),
            Keys::Code(KeyCode::PageUp) => "pgup".into(),
            Keys::Code(KeyCode::PageDown) => "pgdn".into(),
            Keys::Code(KeyCode::Home) => "home".into(),
            Keys::Code(KeyCode::End) => "end".into(),
            Keys::Code(KeyCode::Tab) => "tab".into(),
            Keys::Code(c) => format!("{c:?}").to_lowercase(),
        }
    }
}

pub(crate) struct Binding {
    pub keys: Keys,
    pub scope: Scope,
    pub action: Action,
    pub help: &'static str,
}

const fn bind(keys: Keys, scope: Scope, action: Action, help: &'static str) -> Binding {
    Binding {
        keys,
        scope,
        action,
        help,
    }
}

use Keys::{Char, Code, Ctrl};
use Scope::{Everywhere, Tables};

/// Earlier entries win when two match.
pub(crate) const KEYMAP: &[Binding] = &[
    bind(Char('?'), Everywhere, Action::Help, "this help"),
    bind(Char('q'), Everywhere, Action::Quit, "quit"),
    bind(Ctrl('c'), Everywhere, Action::Quit, "quit"),
    bind(
        Code(KeyCode::Esc),
        Everywhere,
        Action::Back,
        "back; clear the filter",
    ),
    bind(Char('/'), Everywhere, Action::Filter, "filter (regex)"),
    bind(
        Char(':'),
        Everywhere,
        Action::Command,
        ":nodes :pods :ev :plan :vol :q",
    ),
    bind(Char('j'), Everywhere, Action::Down, "down"),
    bind(Code(KeyCode::Down), Everywhere, Action::Down, "down"),
    bind(Char('k'), Everywhere, Action::Up, "up"),
    bind(Code(KeyCode::Up), Everywhere, Action::Up, "up"),
    bind(
        Code(KeyCode::PageDown),
        Everywhere,
        Action::PageDown,
        "page down",
    ),
    bind(Code(KeyCode::PageUp), Everywhere, Action::PageUp, "page up"),
    bind(Char('g'), Everywhere, Action::Top, "first row"),
    bind(Char('G'), Everywhere, Action::Bottom, "last row"),
    bind(
        Keys::Digit,
        Tables,
        Action::Sort,
        "sort by column N (again: desc)",
    ),
    bind(Code(KeyCode::Tab), Everywhere, Action::Next, "next screen"),
    bind(
        Char('l'),
        Scope::Screen(Screen::Containers),
        Action::Logs,
        "logs",
    ),
    bind(
        Code(KeyCode::Enter),
        Scope::Screen(Screen::Containers),
        Action::Describe,
        "describe",
    ),
    bind(
        Char('d'),
        Scope::Screen(Screen::Containers),
        Action::Describe,
        "describe: inspect, spec",
    ),
    bind(
        Char('x'),
        Scope::Screen(Screen::Containers),
        Action::Restart,
        "restart container",
    ),
    bind(
        Code(KeyCode::Enter),
        Scope::Screen(Screen::Nodes),
        Action::ToContainers,
        "the node's containers",
    ),
    bind(
        Char('D'),
        Scope::Screen(Screen::Nodes),
        Action::Drain,
        "drain node",
    ),
    bind(Char('r'), Everywhere, Action::Reconcile, "reconcile now"),
    bind(
        Char('f'),
        Scope::Screen(Screen::Logs),
        Action::Follow,
        "follow on/off",
    ),
    bind(
        Char('w'),
        Scope::Screen(Screen::Logs),
        Action::Wrap,
        "wrap on/off",
    ),
    bind(
        Char('t'),
        Scope::Screen(Screen::Logs),
        Action::Timestamps,
        "timestamps on/off",
    ),
    bind(
        Char('T'),
        Scope::Screen(Screen::Logs),
        Action::Tail,
        "tail 100, 1000, all",
    ),
];

/// The action `key` means on `screen`, if any.
pub(crate) fn lookup(key: &KeyEvent, screen: Screen) -> Option<Action> {
    KEYMAP
        .iter()
        .find(|b| b.scope.covers(screen) && b.keys.matches(key))
        .map(|b| b.action)
}

/// The help's lines: key, where, what; a key listed twice (j and ↓) is
/// merged onto one line.
pub(crate) fn help_lines() -> Vec<(String, &'static str, &'static str)> {
    let mut lines: Vec<(String, &'static str, &'static str)> = Vec::new();
    for b in KEYMAP {
        match lines
            .iter_mut()
            .find(|(_, scope, help)| *help == b.help && *scope == b.scope.label())
        {
            Some((keys, _, _)) => {
                keys.push(' ');
                keys.push_str(&b.keys.label());
            }
            None => lines.push((b.keys.label(), b.scope.label(), b.help)),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn keys_mean_different_things_per_screen() {
        let d = key(KeyCode::Char('d'));
        assert_eq!(lookup(&d, Screen::Containers), Some(Action::Describe));
        assert_eq!(lookup(&d, Screen::Nodes), None);
        let drain = key(KeyCode::Char('D'));
        assert_eq!(lookup(&drain, Screen::Nodes), Some(Action::Drain));
        assert_eq!(lookup(&drain, Screen::Containers), None);
        assert_eq!(
            lookup(&key(KeyCode::Char('3')), Screen::Events),
            Some(Action::Sort)
        );
        assert_eq!(lookup(&key(KeyCode::Char('3')), Screen::Logs), None);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(lookup(&ctrl_c, Screen::Logs), Some(Action::Quit));
        // ctrl-q is not q.
        let ctrl_q = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::CONTROL);
        assert_eq!(lookup(&ctrl_q, Screen::Nodes), None);
    }

    #[test]
    fn help_lists_every_binding_once() {
        let lines = help_lines();
        let down = lines
            .iter()
            .find(|(_, _, h)| *h == "down")
            .expect("down listed");
        assert_eq!(down.0, "j ↓");
        for b in KEYMAP {
            assert!(
                lines
                    .iter()
                    .any(|(k, _, h)| *h == b.help && k.contains(&b.keys.label())),
                "{} missing from help",
                b.help
            );
        }
    }
}
