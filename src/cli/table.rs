//! Plain aligned text tables and ages for terminal output.

use std::fmt::Write;

/// Renders rows under a header, each column as wide as its widest cell.
pub(crate) fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
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
    for row in rows {
        line(&mut row.iter().map(String::as_str));
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
    fn ages() {
        assert_eq!(age(100_000, 55_000), "45s");
        assert_eq!(age(1_000_000, 280_000), "12m");
        assert_eq!(age(3 * 3_600_000 + 5, 0), "3h");
        assert_eq!(age(3 * 86_400_000, 0), "3d");
        assert_eq!(age(0, 5000), "0s");
    }
}
