use super::*;

#[test]
fn backoff_stays_under_its_ceiling_and_cap() {
    let retry = Retry::default();
    for n in 0..20 {
        let ceiling = (retry.base * 2u32.pow(n.min(16))).min(retry.cap);
        assert!(retry.backoff(n) <= ceiling);
    }
}

#[test]
fn the_token_names_the_pool_uid_and_sequence_within_64_characters() {
    let owner = Owner {
        pool: "web".into(),
        uid: "0e2b7f3c-1d2a-4c5b-9f00-123456789abc".into(),
        cluster: "c".into(),
    };
    let token = owner.token(i64::MAX);
    assert!(token.len() <= 64 && token.is_ascii());
    assert!(token.starts_with("0e2b7f3c-1d2a-4c5b-9f00-123456789abc-"));
}

#[test]
fn every_call_has_a_deadline_by_default_and_the_pool_may_set_its_own() {
    let mut settings = AwsProvider {
        region: "eu-west-1".into(),
        ..Default::default()
    };
    let t = timeouts(&settings);
    assert_eq!(t.operation_timeout(), Some(DEFAULT_CALL_TIMEOUT));
    assert_eq!(t.operation_attempt_timeout(), Some(DEFAULT_CALL_TIMEOUT));
    assert_eq!(t.connect_timeout(), Some(CONNECT_TIMEOUT));
    assert_eq!(endpoint(&settings), "https://ec2.eu-west-1.amazonaws.com");
    settings.timeout_seconds = Some(3);
    let t = timeouts(&settings);
    assert_eq!(t.operation_attempt_timeout(), Some(Duration::from_secs(3)));
    assert_eq!(t.connect_timeout(), Some(Duration::from_secs(3)));
}

#[test]
fn a_missing_launch_time_is_not_made_up() {
    let listed = aws_sdk_ec2::types::Instance::builder()
        .instance_id("i-1")
        .build();
    assert_eq!(convert(&listed).launched, None);
}
