//! Everything `qga` prints on stdout goes through [`Out`]: a write error is returned,
//! never a panic, and a closed pipe (`qga ... | head`) ends the program quietly.

use std::fmt::Display;
use std::io::{self, BufWriter, Stdout, Write};

use crate::CliError;

/// Buffered stdout whose errors become [`CliError`]s.
pub struct Out {
    w: BufWriter<Stdout>,
}

impl Out {
    /// The process's stdout.
    pub fn stdout() -> Self {
        Out {
            w: BufWriter::new(io::stdout()),
        }
    }

    /// One line of text.
    pub fn line(&mut self, text: impl Display) -> Result<(), CliError> {
        writeln!(self.w, "{text}").map_err(CliError::stdout)
    }

    /// Raw bytes (a guest file, a script, a man page).
    pub fn bytes(&mut self, data: &[u8]) -> Result<(), CliError> {
        self.w.write_all(data).map_err(CliError::stdout)
    }

    /// A value as pretty JSON, on its own line.
    pub fn json(&mut self, v: &impl serde::Serialize) -> Result<(), CliError> {
        serde_json::to_writer_pretty(&mut self.w, v)
            .map_err(io::Error::from)
            .map_err(CliError::stdout)?;
        self.line("")
    }

    /// A table, columns aligned.
    pub fn table(&mut self, t: &Table) -> Result<(), CliError> {
        let text = t.render();
        self.bytes(text.as_bytes())
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> Result<(), CliError> {
        self.w.flush().map_err(CliError::stdout)
    }
}

/// A table of text: a header row and rows of cells, printed with each column as wide
/// as its widest cell, two spaces between columns.
pub struct Table {
    /// Column names; `None` for a table of key/value lines.
    header: Option<Vec<String>>,
    columns: usize,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new<const N: usize>(header: [&str; N]) -> Self {
        Table {
            header: Some(header.iter().map(|h| h.to_string()).collect()),
            columns: N,
            rows: Vec::new(),
        }
    }

    /// A table of `columns` columns without a header line.
    pub fn without_header(columns: usize) -> Self {
        Table {
            header: None,
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        debug_assert_eq!(N, self.columns);
        self.rows.push(cells.into());
    }

    /// The table as text, one line per row, no trailing blanks.
    pub fn render(&self) -> String {
        let mut widths = vec![0; self.columns];
        for row in self.header.iter().chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for row in self.header.iter().chain(&self.rows) {
            let mut line = String::new();
            for (cell, w) in row.iter().zip(&widths) {
                line.push_str(cell);
                let pad = w - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut t = Table::new(["name", "value"]);
        t.row(["a".into(), "1".into()]);
        t.row(["longer-name".into(), "".into()]);
        t.row(["é".into(), "22".into()]);
        assert_eq!(
            t.render(),
            "name         value\na            1\nlonger-name\né            22\n"
        );
        let mut t = Table::without_header(2);
        t.row(["id".into(), "debian".into()]);
        t.row(["pretty-name".into(), "Debian 12".into()]);
        assert_eq!(t.render(), "id           debian\npretty-name  Debian 12\n");
    }
}
