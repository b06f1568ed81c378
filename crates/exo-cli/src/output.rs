//! Standard output that ends quietly when the reader goes away, and the
//! colour decision.
//!
//! `exo task list | head -1` closes the pipe while `exo` still writes; the
//! write fails with a broken pipe, and `exo` exits at once with status 0
//! (as `rg` does) instead of panicking. Every line the commands print goes
//! through [`line()`] (the `outln!` macro) or [`text`].

use std::io::{self, IsTerminal, Write};

/// Writes the text and a newline to stdout.
pub(crate) fn line(arguments: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    settle(out.write_fmt(arguments).and_then(|()| out.write_all(b"\n")));
}

/// Writes the text to stdout without a newline, and flushes it.
pub(crate) fn text(arguments: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    settle(out.write_fmt(arguments).and_then(|()| out.flush()));
}

/// Writes the text and a newline to stdout, ignoring a closed stdout: for
/// a long-running worker, which must not stop because nobody reads its
/// banner.
pub(crate) fn best_effort(arguments: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let _ = out.write_fmt(arguments).and_then(|()| out.write_all(b"\n"));
}

/// Ends the process quietly when stdout is closed; reports any other
/// write error once and exits with status 1.
fn settle(result: io::Result<()>) {
    match result {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            let _ = writeln!(io::stderr(), "error: cannot write to stdout: {error}");
            std::process::exit(1);
        }
    }
}

/// Whether to colour stdout: never when `NO_COLOR` is set (and not
/// empty), always when `CLICOLOR_FORCE` is (and not `0`), otherwise when
/// stdout is a terminal.
pub(crate) fn colour() -> bool {
    colour_for(
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("CLICOLOR_FORCE").as_deref(),
        io::stdout().is_terminal(),
    )
}

fn colour_for(
    no_colour: Option<&std::ffi::OsStr>,
    force: Option<&std::ffi::OsStr>,
    terminal: bool,
) -> bool {
    if no_colour.is_some_and(|value| !value.is_empty()) {
        return false;
    }
    if force.is_some_and(|value| !value.is_empty() && value != "0") {
        return true;
    }
    terminal
}

/// `println!` that ends quietly on a closed stdout (see [`line()`]).
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($argument:tt)*) => {
        $crate::output::line(format_args!($($argument)*))
    };
}
pub(crate) use outln;

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::colour_for;

    #[test]
    fn colour_follows_no_color_then_clicolor_force_then_the_terminal() {
        let cases: [(Option<&str>, Option<&str>, bool, bool); 7] = [
            (None, None, true, true),
            (None, None, false, false),
            (Some("1"), None, true, false),
            (Some(""), None, true, true),
            (Some("1"), Some("1"), true, false),
            (None, Some("1"), false, true),
            (None, Some("0"), false, false),
        ];
        for (no_colour, force, terminal, expected) in cases {
            assert_eq!(
                colour_for(no_colour.map(OsStr::new), force.map(OsStr::new), terminal),
                expected,
                "NO_COLOR={no_colour:?} CLICOLOR_FORCE={force:?} terminal={terminal}"
            );
        }
    }
}
