//! `spawner-system`: the controller, the sweeper and the API in one binary, for their images. Each image installs it under its component's name (`/usr/local/bin/spawner-api`, ...)
//! and it runs the component its name says, exactly as that component's own binary would.
//!
//! Why one binary: each binary compiles its own copy of the library's async code it runs (the
//! futures are instantiated where they are polled, and an optimized build does not share
//! generic instances across crates), so binaries that share most of their code (kube,
//! k8s-openapi, hyper) paid that code generation once each — with thin LTO, which optimized
//! everything a binary reaches, 408 s of CPU for the controller's, sweeper's, API's and router's
//! links against 98 s for the four as one (`cargo build --release --timings`). (The components'
//! entry points are boxed since, so most of that code is compiled once, in the library — see the
//! crate docs; the one binary still ships it once for the three images.) The router keeps a
//! binary of its own: it runs in the reverse proxy's pod,
//! which a deploy should restart only when the router itself changed (a restart closes the
//! users' WebSockets); so do the sidecar, which runs in every backend pod, and the demo's apps.
//! The separate binaries are still built for development and the tests; this includes their
//! sources, so each main is written once.

use std::process::ExitCode;

#[path = "spawner-api.rs"]
mod api;
#[path = "spawner-controller.rs"]
mod controller;
#[path = "spawner-sweeper.rs"]
mod sweeper;

/// A component's `main`.
type Main = fn() -> ExitCode;

/// The components, by the name each image installs this binary under.
const COMPONENTS: [(&str, Main); 3] =
    [("spawner-api", api::main), ("spawner-controller", controller::main), ("spawner-sweeper", sweeper::main)];

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    match component(&argv0.to_string_lossy()) {
        Some(main) => main(),
        None => {
            let names: Vec<&str> = COMPONENTS.iter().map(|(name, _)| *name).collect();
            eprintln!(
                "error: spawner-system runs the component its file is named after ({}); it was run as {argv0:?}",
                names.join(", ")
            );
            ExitCode::FAILURE
        }
    }
}

/// The component of the binary at `path` (its file name).
fn component(path: &str) -> Option<Main> {
    let name = path.rsplit('/').next().unwrap_or(path);
    COMPONENTS.iter().find(|(component, _)| *component == name).map(|(_, main)| *main)
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_the_component_its_file_is_named_after() {
        assert!(super::component("/usr/local/bin/spawner-api").is_some());
        assert!(super::component("spawner-sweeper").is_some());
        assert!(super::component("/usr/local/bin/spawner-system").is_none());
        assert!(super::component("/usr/local/bin/spawner-sidecar").is_none());
        assert!(super::component("/usr/local/bin/spawner-router").is_none());
    }
}
