//! Tests against the test cluster (`SPAWNER_TEST_CLUSTER`, the local cluster by default) that
//! bring their own Spawner: the `spawner-controller` and `spawner-sweeper` binaries run as
//! processes on this machine, scoped to each test's namespace, so none may run while Spawner is
//! deployed (`cargo xtask test` runs them first, on the local cluster with nothing deployed).
//!
//! The exceptions are named `e2e_*` (the CLI's Ready path, the sweep through the deployed
//! sweeper): they need Spawner deployed and run in the end-to-end phase instead.

mod api;
mod cli;
mod controller;
mod controller_bench;
mod controller_ready;
mod node;
mod pool;
mod scale_bench;
mod support;
mod sweeper;
