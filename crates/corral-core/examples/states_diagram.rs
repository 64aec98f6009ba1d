//! Prints the sandbox state diagram generated from the transition table (for
//! `docs/states.md`): `cargo run -p corral-core --example states_diagram`.

use std::io::Write;

fn main() -> std::io::Result<()> {
    std::io::stdout().write_all(corral_core::transitions::mermaid().as_bytes())
}
