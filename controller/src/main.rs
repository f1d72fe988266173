//! `roost-controller`: the regional controller.
//!
//! Not built yet: the fleet store, site availability, enrollment, central
//! intent and the dashboard land with the controller issue. Until then this
//! binary says so and exits with status 69 (EX_UNAVAILABLE), so no script
//! mistakes it for a running controller.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.first().map(String::as_str), Some("--version" | "-V")) {
        println!("roost-controller {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "roost-controller: not yet: the regional controller is not built in this version.\n\
         Run a site on its own with `roost-agent run --config site-configs/edge-factory-01.yaml`."
    );
    ExitCode::from(69)
}
