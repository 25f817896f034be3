use k8s_openapi::api::core::v1::Pod;

use super::*;
use crate::controllers::fixtures::{BackendExt, PodExt, at};

const BASE: &str = "http://127.0.0.1:30080";

fn derive(backend: &SessionLivedBackend, pod: PodView<'_>, now: i64) -> (SessionLivedBackendStatus, Vec<Transition>) {
    derive_status(backend, pod, at(now), BASE)
}

fn cond<'a>(status: &'a SessionLivedBackendStatus, type_: &str) -> &'a Condition {
    status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} condition"))
}

fn reasons(transitions: &[Transition]) -> Vec<&'static str> {
    transitions.iter().map(|t| t.reason).collect()
}

/// Applies a derived status, as the API server would after the controller's patch.
fn with(mut backend: SessionLivedBackend, status: SessionLivedBackendStatus) -> SessionLivedBackend {
    backend.status = Some(status);
    backend
}

#[test]
fn phase_follows_the_pod_through_its_life() {
    let pods = [
        ("no pod yet", None, Phase::Pending),
        ("unscheduled pod", Some(Pod::test()), Phase::Pending),
        ("bound pod", Some(Pod::test().scheduled_to("n1")), Phase::Scheduled),
        ("running containers", Some(Pod::test().scheduled_to("n1").running()), Phase::Running),
        ("ready pod", Some(Pod::test().scheduled_to("n1").running().ready()), Phase::Ready),
        ("crashed app", Some(Pod::test().scheduled_to("n1").running().app_terminated(1, "Error")), Phase::Failed),
        ("failed pod", Some(Pod::test().scheduled_to("n1").phase("Failed")), Phase::Failed),
    ];
    for (case, pod, expected) in &pods {
        let view = pod.as_ref().map_or(PodView::NotCreated, PodView::Exists);
        let (status, _) = derive(&SessionLivedBackend::test(), view, 1001);
        assert_eq!(status.phase, Some(*expected), "{case}");
    }
}

#[test]
fn a_new_backend_is_pending_with_its_url_and_all_three_conditions_false() {
    let (status, transitions) = derive(&SessionLivedBackend::test(), PodView::NotCreated, 1001);
    assert_eq!(status.phase, Some(Phase::Pending));
    assert_eq!(status.url.as_deref(), Some("http://127.0.0.1:30080/p/room/game/"));
    assert_eq!(status.observed_generation, Some(1));
    for type_ in ["Scheduled", "Ready", "Failed"] {
        let c = cond(&status, type_);
        assert_eq!(c.status, "False", "{type_}");
        assert_eq!(c.observed_generation, Some(1));
        assert_eq!(c.last_transition_time.0, at(1001));
    }
    assert!(transitions.is_empty(), "Pending is announced by PodCreated, not by a transition");
}

#[test]
fn the_url_does_not_double_the_slash_of_a_base_url_ending_in_one() {
    assert_eq!(url("https://example.com/", "ns", "b"), "https://example.com/p/ns/b/");
}

#[test]
fn an_unschedulable_pod_says_why_in_the_scheduled_condition() {
    let pod = Pod::test().unschedulable("0/1 nodes are available: node(s) didn't match selector");
    let (status, _) = derive(&SessionLivedBackend::test(), PodView::Exists(&pod), 1001);
    let scheduled = cond(&status, "Scheduled");
    assert_eq!(scheduled.reason, "Unschedulable");
    assert!(scheduled.message.contains("didn't match selector"));
}

#[test]
fn a_ready_pod_makes_the_backend_ready_with_node_ip_and_times() {
    let pod = Pod::test().scheduled_to("node-a").running().ready();
    let (status, transitions) = derive(&SessionLivedBackend::test(), PodView::Exists(&pod), 1005);
    assert_eq!(status.phase, Some(Phase::Ready));
    assert_eq!(status.node_name.as_deref(), Some("node-a"));
    assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.7"));
    assert_eq!(status.pod_port, Some(9080), "the sidecar's proxy port: where the reverse proxy connects");
    assert_eq!(status.started_at.as_ref().unwrap().0, at(1003));
    assert_eq!(status.ready_at.as_ref().unwrap().0, at(1004), "the kubelet's time, not the controller's");
    assert_eq!(cond(&status, "Ready").status, "True");
    assert_eq!(cond(&status, "Scheduled").status, "True");
    assert_eq!(reasons(&transitions), vec!["Ready"], "Scheduled is in the conditions, not worth an Event");
}

#[test]
fn a_normal_start_is_announced_once_when_ready() {
    let backend = SessionLivedBackend::test();
    let (s1, t1) = derive(&backend, PodView::NotCreated, 1000);
    let backend = with(backend, s1);
    let scheduled = Pod::test().scheduled_to("n1");
    let (s2, t2) = derive(&backend, PodView::Exists(&scheduled), 1001);
    let backend = with(backend, s2);
    let running = scheduled.clone().running();
    let (s3, t3) = derive(&backend, PodView::Exists(&running), 1002);
    let backend = with(backend, s3);
    let ready = running.clone().ready();
    let (s4, t4) = derive(&backend, PodView::Exists(&ready), 1003);
    let backend = with(backend, s4);
    let (s5, t5) = derive(&backend, PodView::Exists(&ready), 1009);
    assert_eq!(
        [reasons(&t1), reasons(&t2), reasons(&t3), reasons(&t4), reasons(&t5)],
        [vec![], vec![], vec![], vec!["Ready"], vec![]]
    );
    assert_eq!(Some(&s5), backend.status.as_ref(), "an unchanged pod changes nothing, not even times");
}

#[test]
fn last_transition_time_moves_only_when_the_condition_status_changes() {
    let backend = SessionLivedBackend::test();
    let (s1, _) = derive(&backend, PodView::NotCreated, 1000);
    let backend = with(backend, s1);
    let pod = Pod::test().scheduled_to("n1");
    let (s2, _) = derive(&backend, PodView::Exists(&pod), 1010);
    assert_eq!(cond(&s2, "Scheduled").last_transition_time.0, at(1010));
    assert_eq!(cond(&s2, "Ready").last_transition_time.0, at(1000), "Ready stayed False");
    assert_eq!(cond(&s2, "Ready").reason, "ContainersNotReady", "reason and message still follow the pod");
}

#[test]
fn a_crashed_app_fails_the_backend_even_while_the_sidecar_runs() {
    let backend = with(
        SessionLivedBackend::test(),
        SessionLivedBackendStatus { phase: Some(Phase::Ready), ..Default::default() },
    );
    let pod = Pod::test().scheduled_to("n1").running().ready().app_terminated(137, "OOMKilled");
    let (status, transitions) = derive(&backend, PodView::Exists(&pod), 1100);
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(status.failed_at.as_ref().unwrap().0, at(1100));
    let failed = cond(&status, "Failed");
    assert_eq!((failed.status.as_str(), failed.reason.as_str()), ("True", "ContainerTerminated"));
    assert_eq!(failed.message, "container app exited with code 137 (OOMKilled)");
    assert_eq!(cond(&status, "Ready").status, "False");
    assert_eq!(transitions.len(), 1);
    assert_eq!((transitions[0].type_, transitions[0].reason), (EventType::Warning, "ContainerTerminated"));
}

#[test]
fn a_pod_the_api_server_rejects_fails_the_backend_with_its_message() {
    let message = "Pod \"game\" is invalid: spec.containers[0].image: Required value";
    let (status, transitions) = derive(&SessionLivedBackend::test(), PodView::Rejected(message), 1001);
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(cond(&status, "Failed").reason, "InvalidPod");
    assert_eq!(cond(&status, "Failed").message, message);
    assert_eq!(reasons(&transitions), vec!["InvalidPod"]);
}

#[test]
fn a_backend_not_ready_by_its_startup_timeout_fails_with_startup_timeout() {
    let backend = SessionLivedBackend::test().created_at(1000).startup_timeout(30);
    let pod = Pod::test().scheduled_to("n1").running();
    let (before, _) = derive(&backend, PodView::Exists(&pod), 1029);
    assert_eq!(before.phase, Some(Phase::Running));
    let (after, transitions) = derive(&backend, PodView::Exists(&pod), 1030);
    assert_eq!(after.phase, Some(Phase::Failed));
    assert_eq!(cond(&after, "Failed").reason, "StartupTimeout");
    assert_eq!(reasons(&transitions), vec!["StartupTimeout"]);
}

#[test]
fn a_backend_that_was_ready_once_never_times_out_on_startup() {
    let backend = SessionLivedBackend::test().created_at(1000).startup_timeout(30).ready_at(1010);
    let pod = Pod::test().scheduled_to("n1").running();
    let (status, transitions) = derive(&backend, PodView::Exists(&pod), 5000);
    assert_eq!(status.phase, Some(Phase::Running));
    assert_eq!(reasons(&transitions), vec!["NotReady"]);
}

#[test]
fn failed_is_final_whatever_the_pod_does_next() {
    let backend = SessionLivedBackend::test().failed_at(1030);
    let pod = Pod::test().scheduled_to("n1").running().ready();
    let (status, transitions) = derive(&backend, PodView::Exists(&pod), 1040);
    assert_eq!(status.phase, Some(Phase::Failed));
    assert!(transitions.is_empty());
}

#[test]
fn a_pod_deleted_under_a_running_backend_fails_it_as_lost() {
    let backend = SessionLivedBackend::test().ready_at(1004);
    let (status, _) = derive(&backend, PodView::Lost, 1050);
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(cond(&status, "Failed").reason, "PodLost");
}

#[test]
fn an_image_pull_error_is_the_ready_reason_as_kubectl_get_pods_shows_it() {
    for kubelet_reason in ["ErrImagePull", "ImagePullBackOff"] {
        let pod = Pod::test().scheduled_to("n1").app_waiting(kubelet_reason);
        let (status, _) = derive(&SessionLivedBackend::test(), PodView::Exists(&pod), 1001);
        let ready = cond(&status, "Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", kubelet_reason));
        assert_eq!(ready.message, "container app: details");
        assert_eq!(status.reason.as_deref(), Some(kubelet_reason), "mirrored for the REASON column");
        assert_eq!(status.message.as_deref(), Some("container app: details"));
        assert_eq!(status.phase, Some(Phase::Scheduled));
    }
}

#[test]
fn the_application_container_is_named_before_the_sidecar_whatever_order_the_kubelet_lists_them() {
    let mut pod = Pod::test().scheduled_to("n1").app_waiting("ErrImagePull").sidecar_waiting("ImagePullBackOff");
    pod.status.as_mut().unwrap().container_statuses.as_mut().unwrap().reverse();
    let (status, _) = derive(&SessionLivedBackend::test(), PodView::Exists(&pod), 1001);
    assert_eq!(status.reason.as_deref(), Some("ErrImagePull"));
}

#[test]
fn an_init_container_held_back_by_the_kubelet_is_the_ready_reason() {
    let pod = Pod::test().scheduled_to("n1").init_waiting("setup", "CrashLoopBackOff");
    let (status, _) = derive(&SessionLivedBackend::test(), PodView::Exists(&pod), 1001);
    let ready = cond(&status, "Ready");
    assert_eq!(ready.reason, "CrashLoopBackOff");
    assert_eq!(ready.message, "init container setup: details");
}

#[test]
fn containers_being_created_are_the_normal_path_not_a_reason_of_their_own() {
    // The fixture's scheduled pod has both containers waiting in ContainerCreating.
    let pod = Pod::test().scheduled_to("n1");
    let (status, _) = derive(&SessionLivedBackend::test(), PodView::Exists(&pod), 1001);
    assert_eq!(status.reason.as_deref(), Some("ContainersNotReady"));
}

#[test]
fn an_unschedulable_backend_says_so_as_its_ready_reason() {
    let pod = Pod::test().unschedulable("0/1 nodes are available: node(s) didn't match selector");
    let (status, _) = derive(&SessionLivedBackend::test(), PodView::Exists(&pod), 1001);
    let ready = cond(&status, "Ready");
    assert_eq!(
        (ready.reason.as_str(), ready.message.as_str()),
        ("Unschedulable", "0/1 nodes are available: node(s) didn't match selector")
    );
    assert_eq!(status.reason.as_deref(), Some("Unschedulable"));
}

#[test]
fn a_ready_backend_has_no_reason_or_message_at_the_top_of_its_status() {
    let backend = with(
        SessionLivedBackend::test(),
        SessionLivedBackendStatus {
            reason: Some("ContainersNotReady".into()),
            message: Some("waiting for the containers to be ready".into()),
            ..Default::default()
        },
    );
    let pod = Pod::test().scheduled_to("n1").running().ready();
    let (status, _) = derive(&backend, PodView::Exists(&pod), 1005);
    assert_eq!((status.reason, status.message), (None, None));
}

#[test]
fn a_startup_timeout_says_what_the_backend_was_still_waiting_for() {
    let backend = SessionLivedBackend::test().created_at(1000).startup_timeout(30);
    let pod = Pod::test().scheduled_to("n1").app_waiting("ImagePullBackOff");
    let (status, _) = derive(&backend, PodView::Exists(&pod), 1030);
    assert_eq!(status.reason.as_deref(), Some("StartupTimeout"));
    assert_eq!(
        status.message.as_deref(),
        Some("not Ready within startupTimeoutSeconds (30s); still ImagePullBackOff: container app: details")
    );
    assert_eq!(cond(&status, "Ready").message, cond(&status, "Failed").message);
}

#[test]
fn an_unset_startup_timeout_is_cut_to_a_shorter_max_lifetime() {
    let backend = SessionLivedBackend::test().created_at(1000).max_lifetime(20);
    let pod = Pod::test().scheduled_to("n1").running();
    let (before, _) = derive(&backend, PodView::Exists(&pod), 1019);
    assert_eq!(before.phase, Some(Phase::Running));
    let (after, _) = derive(&backend, PodView::Exists(&pod), 1020);
    assert_eq!(after.reason.as_deref(), Some("StartupTimeout"));
    assert!(after.message.unwrap().starts_with("not Ready within startupTimeoutSeconds (20s)"));
}

#[test]
fn a_backend_being_deleted_is_terminating() {
    let backend = SessionLivedBackend::test().ready_at(1004).deleting();
    let (status, transitions) = derive(&backend, PodView::NotCreated, 2001);
    assert_eq!(status.phase, Some(Phase::Terminating));
    assert_eq!(reasons(&transitions), vec!["Terminating"]);
}

#[test]
fn api_times_are_truncated_to_seconds_as_the_api_server_stores_them() {
    let t = Timestamp::from_millisecond(1_500_999).unwrap();
    assert_eq!(time(t).0, at(1500));
}

#[test]
fn the_status_names_the_pod_which_for_a_pool_backend_is_the_warm_pods() {
    let (status, _) = derive(&SessionLivedBackend::test(), PodView::NotCreated, 1001);
    assert_eq!(status.pod_name, None, "no pod yet");
    let mut pod = Pod::test().scheduled_to("node-a");
    pod.metadata.name = Some("pool-warm-x7k2p".into());
    let (status, _) = derive(&SessionLivedBackend::test(), PodView::Exists(&pod), 1002);
    assert_eq!(status.pod_name.as_deref(), Some("pool-warm-x7k2p"));
}
