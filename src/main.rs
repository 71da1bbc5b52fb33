use std::process::ExitCode;

fn main() -> ExitCode {
    prism::cli::main()
}
