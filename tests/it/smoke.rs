use crate::common::*;

#[test]
fn a_task_present_before_start_is_run() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", r#"echo "ran: $desc""#);
    spool.drop_simple("marie", "pre", "hello");
    let mut w = Daemon::worker(&spool, "marie", &agent, &[]);
    let r = spool.wait_result("marie", "pre");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["stdout"], "ran: hello\n");
    assert!(w.stop().success());
}
