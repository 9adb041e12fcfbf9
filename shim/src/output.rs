//! Writing to stdout as git does (write_or_die.c): a reader that has gone away (`| head -1`)
//! ends the program quietly, killed by SIGPIPE, instead of a panic or a `fatal:` line.
//!
//! Only stdout dies this way. SIGPIPE stays ignored for the rest of the program, so a daemon
//! that goes away mid-call is still an error the shim reports: writes to its socket may use
//! writev, which raises the signal where send(MSG_NOSIGNAL) would not.

use std::fmt;
use std::io::{self, Write};

/// Like `println!`, through [`write_fmt`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Like `print!`, through [`write_fmt`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_fmt(format_args!($($arg)*)) };
}

/// Writes to stdout; see [`Stdout`] for what a failure does.
pub fn write_fmt(args: fmt::Arguments) {
    if let Err(e) = io::stdout().lock().write_fmt(args) {
        die_of_write_error(&e);
    }
}

/// stdout for code that takes a writer (man pages, completions): a closed pipe ends the
/// program quietly, any other write error ends it with one `fatal:` line.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match io::stdout().lock().write(buf) {
            Err(e) => die_of_write_error(&e),
            written => written,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match io::stdout().lock().flush() {
            Err(e) => die_of_write_error(&e),
            flushed => flushed,
        }
    }
}

fn die_of_write_error(e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        die_of_closed_pipe();
    }
    eprintln!("fatal: cannot write to standard output: {e}");
    std::process::exit(128);
}

/// Ends the program as a closed pipe ends git: killed by SIGPIPE, nothing on stderr.
pub fn die_of_closed_pipe() -> ! {
    // SAFETY: setting a signal's disposition to its default installs no handler, and raising
    // it then only ends the process; neither touches memory Rust owns.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Only reached if the signal is blocked: the exit status a shell reports for it.
    std::process::exit(128 + libc::SIGPIPE);
}
