//! Plain-text tables and JSON for command output (stdout); progress goes to stderr.
//!
//! Output is written without `println!`, which panics when the reader goes away
//! (`flotilla node ls | head`): a closed pipe just ends the output.

use std::io::Write;

/// `println!` that ends quietly when stdout is closed.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::line(&format!($($arg)*)) };
}

/// Writes one line to stdout, ignoring a closed pipe.
pub fn line(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

pub fn print_json(value: &serde_json::Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => line(&text),
        Err(error) => eprintln!("error: cannot render JSON: {error}"),
    }
}

/// Left-aligned columns, two spaces apart, like `docker-cloud`'s tables.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        self::line(padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
