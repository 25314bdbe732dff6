//! The plain tables the tools print (`hw-dlq list`, `hw-status --tasks`):
//! columns two spaces apart, each as wide as its widest cell, no trailing
//! blanks, one line a row.

use std::fmt::Write;

/// `rows` (the header first, if any), aligned; every row has the same
/// number of cells.
pub fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_lines_end_in_no_blank() {
        let rows = vec![
            vec!["ID".to_string(), "STATE".into(), "X".into()],
            vec!["long-id".to_string(), "é".into(), "".into()],
        ];
        assert_eq!(aligned(&rows), "ID       STATE  X\nlong-id  é\n");
    }
}
