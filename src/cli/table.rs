//! Plain aligned text tables and ages for terminal output. Text from
//! outside (EC2 tags, a node's stderr, container names) is printed with
//! its control characters escaped: a terminal never takes it as commands
//! (an OSC 52 in a Name tag would otherwise write the reader's clipboard).

use std::borrow::Cow;
use std::fmt::Write;

/// `s` with every control character escaped as `\u{..}`, tabs and line
/// breaks too: one line, safe to print on a terminal.
pub(crate) fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .fold(String::with_capacity(s.len()), |mut out, c| {
                if c.is_control() {
                    let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
                } else {
                    out.push(c);
                }
                out
            }),
    )
}

/// `text` with control characters escaped, its line breaks kept.
pub(crate) fn printable_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&printable(line));
    }
    out
}

/// Renders rows under a header, each column as wide as its widest cell;
/// control characters in cells escaped.
pub(crate) fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(|c| c.as_ref()));
    }
    out
}

/// A size for people: `512M`, `1.5G`, `23.5G` (binary units, one decimal
/// from G up, as Docker and free(1) count).
pub fn size(bytes: i64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    const GIB: f64 = (1u64 << 30) as f64;
    let b = bytes.max(0) as f64;
    if b >= GIB {
        let g = format!("{:.1}", b / GIB);
        format!("{}G", g.strip_suffix(".0").unwrap_or(&g))
    } else {
        format!("{}M", (b / MIB).round())
    }
}

/// `45s`, `12m`, `3h`, `2d` since a unix-ms timestamp.
pub fn age(now_ms: i64, then_ms: i64) -> String {
    let secs = (now_ms - then_ms).max(0) / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub(crate) fn opt(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_free() {
        assert_eq!(size(512 << 20), "512M");
        assert_eq!(size(1 << 30), "1G");
        assert_eq!(size(24_684_096 * 1024), "23.5G");
        assert_eq!(size(1_500_000), "1M");
        assert_eq!(size(-5), "0M");
    }

    #[test]
    fn columns_align_to_the_widest_cell() {
        let text = render(
            &["NAME", "STATE"],
            &[
                vec!["node1".into(), "ready".into()],
                vec!["n".into(), "lost".into()],
            ],
        );
        assert_eq!(text, "NAME   STATE\nnode1  ready\nn      lost\n");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let osc52 = "web\u{1b}]52;c;cm0gLXJmIC8=\u{7}";
        assert_eq!(printable(osc52), "web\\u{1b}]52;c;cm0gLXJmIC8=\\u{7}");
        assert_eq!(printable("a\tb\nc\u{9b}"), "a\\u{9}b\\u{a}c\\u{9b}");
        assert!(matches!(printable("plain ü"), Cow::Borrowed("plain ü")));
        assert_eq!(printable_lines("a\u{1b}[2J\nb\n"), "a\\u{1b}[2J\nb\n");
        let text = render(&["NAME"], &[vec![osc52.into()]]);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        // Widths count what is printed.
        let text = render(&["N", "X"], &[vec!["\u{1b}".into(), "x".into()]]);
        assert_eq!(text, "N       X\n\\u{1b}  x\n");
    }

    #[test]
    fn ages() {
        assert_eq!(age(100_000, 55_000), "45s");
        assert_eq!(age(1_000_000, 280_000), "12m");
        assert_eq!(age(3 * 3_600_000 + 5, 0), "3h");
        assert_eq!(age(3 * 86_400_000, 0), "3d");
        assert_eq!(age(0, 5000), "0s");
    }
}
