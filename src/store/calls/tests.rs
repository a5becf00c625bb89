use super::*;

#[test]
fn an_end_is_planned_from_the_row_alone() {
    let start = Utc::now();
    let mut row = new_call_row(
        &NewCall {
            id: None,
            tenant_id: Uuid::new_v4(),
            campaign_id: None,
            lead_id: None,
            phone_number: None,
            external_id: None,
            protocol: Protocol::Voice,
            direction: Direction::Inbound,
            started_at: start,
            media_metadata: None,
        },
        "n",
    );
    let now = DbTime::from(start + chrono::Duration::seconds(10));
    let wait = std::time::Duration::from_secs(300);
    // An end given before the start counts from the start: 0 s, nothing to wait for.
    let early = Some(start - chrono::Duration::seconds(5));
    let plan = EndPlan::new(&row, 1_000, None, early, false, wait, now).unwrap();
    assert_eq!(
        (plan.ended, plan.seconds, plan.cost),
        (row.started_at, 0, 0)
    );
    assert_eq!((plan.run_at, plan.postcall_status), (now, POSTCALL_PENDING));
    // 2.5 s are 3 billable seconds; an expected recording not yet here delays the job.
    row.recording_expected = true;
    let end = Some(start + chrono::Duration::milliseconds(2_500));
    let plan = EndPlan::new(&row, 7, None, end, false, wait, now).unwrap();
    assert_eq!((plan.seconds, plan.cost), (3, 21));
    assert_eq!(plan.postcall_status, POSTCALL_WAITING);
    assert_eq!(plan.run_at.0, now.0 + chrono::Duration::seconds(300));
    // The engine's own recording comes with the end: no wait.
    let plan = EndPlan::new(&row, 7, None, end, true, wait, now).unwrap();
    assert_eq!(plan.postcall_status, POSTCALL_PENDING);
    // A tenant that expects recordings, and a cost that overflows.
    row.recording_expected = false;
    let config = DbJson(serde_json::json!({"expect_recording": true}));
    let plan = EndPlan::new(&row, 7, Some(&config), end, false, wait, now).unwrap();
    assert_eq!(plan.postcall_status, POSTCALL_WAITING);
    assert!(EndPlan::new(&row, i64::MAX, None, end, false, wait, now).is_err());
}

#[test]
fn billing_counts_every_started_second() {
    let t0 = DateTime::UNIX_EPOCH;
    assert_eq!(billable_seconds(t0, t0), 0);
    assert_eq!(
        billable_seconds(t0, t0 + chrono::Duration::milliseconds(1)),
        1
    );
    assert_eq!(
        billable_seconds(t0, t0 + chrono::Duration::milliseconds(61_000)),
        61
    );
    assert_eq!(
        billable_seconds(t0, t0 + chrono::Duration::milliseconds(61_001)),
        62
    );
    assert_eq!(billable_seconds(t0 + chrono::Duration::seconds(5), t0), 0);
}
