//! What clap generates from the command line's own definitions: shell
//! completions and manual pages, so they never drift from `--help`.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use super::{Cli, Failure};

/// `prism completions SHELL`: the script on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<(), Failure> {
    // clap_complete panics when its writer fails; a buffer cannot, and a
    // closed stdout then surfaces as an ordinary write error.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "prism", &mut script);
    write_stdout(&script)
}

/// `prism man`: prism(1) on stdout.
pub(crate) fn man_page() -> Result<(), Failure> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    write_stdout(&page)
}

/// `prism man --dir DIR`: prism.1 and a page per command in DIR.
pub(crate) fn man_pages(dir: &Path) -> Result<(), Failure> {
    clap_mangen::generate_to(Cli::command(), dir).map_err(|e| {
        Failure::Output(std::io::Error::new(
            e.kind(),
            format!("cannot write man pages into {}: {e}", dir.display()),
        ))
    })
}

fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}
