//! The agent as the end-to-end tests put it in their guest: exactly `qga-agent`'s
//! `main` (the binary is a thin wrapper over the library), built by this package
//! so the tests can find it through `CARGO_BIN_EXE_qga-agent-e2e`.

fn main() {
    std::process::exit(qga_agent::main_with(std::env::args_os()));
}
