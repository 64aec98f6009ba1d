//! The `corral-agent` binary: PID 1 of every sandbox. All the work lives in the library.

fn main() -> std::process::ExitCode {
    corral_agent::main_entry()
}
