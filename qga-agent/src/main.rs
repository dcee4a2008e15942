//! `qga-agent`: a qemu-ga compatible QEMU Guest Agent. See the library docs.

fn main() {
    std::process::exit(qga_agent::main_with(std::env::args_os()));
}
