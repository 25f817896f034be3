//! End to end, against Spawner deployed on the test cluster (`cargo xtask deploy`): every test
//! here is named `e2e_*`. `cargo xtask test` runs them on the local cluster, then on the two-node
//! kind cluster `spawner-e2e` (`SPAWNER_TEST_CLUSTER=kind`), where the network enforces
//! NetworkPolicy; the `e2e_on_two_nodes*` and `e2e_enforced*` tests run only there.
//!
//! Besides them, `kind`: a throwaway kind cluster of the test's own, with Spawner deployed into
//! it (needs only Docker; `cargo xtask test` runs it on its own before the kind phase).
//!
//! The API server outage test is not here but in tests/outage: it stops the API server, so it
//! has a test binary of its own.

mod api;
mod isolation;
mod kind;
mod kind_cluster;
mod lifecycle;
mod routing;
mod support;
mod two_nodes;

/// Tests run in parallel, and one of them deletes the controller's pod
/// (`two_nodes::e2e_on_two_nodes_a_controller_lost_while_backends_start_leaves_one_pod_and_one_service_each`):
/// while the Deployment's next pod waits out the Lease, no backend turns Ready, and a backend of
/// another test could be swept before its status ever said Ready. Tests that need the controller
/// share it (read); the one that deletes it has it alone (write).
static CONTROLLER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
