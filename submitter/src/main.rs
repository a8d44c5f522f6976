//! `peergrid`: the submitter's command line. See `peergrid --help`.

fn main() -> std::process::ExitCode {
    peergrid_submitter::cli::main()
}
