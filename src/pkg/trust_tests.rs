use super::*;
use crate::pkg::index::generate_key;

fn key() -> String {
    encode_key(generate_key().verifying_key().as_bytes())
}

fn policy(keys: &[&str], repos: &[&str], allow_unsigned: bool) -> Policy {
    TrustConfig {
        trusted_keys: keys.iter().map(|k| k.to_string()).collect(),
        allowed_repositories: repos.iter().map(|r| r.to_string()).collect(),
        allow_unsigned,
    }
    .policy("test")
    .unwrap()
}

const REPO: &str = "http://repo.example/stable/";

#[test]
fn a_target_is_granted_the_trusted_keys_narrowed_to_those_it_names() {
    let (a, b, foreign) = (key(), key(), key());
    let p = policy(&[&a, &b], &[REPO], false);
    let all = decide(&p, REPO, &[]).unwrap();
    assert_eq!(all.expected, vec![a.clone(), b.clone()]);
    assert!(all.require_signature);
    let narrowed = decide(&p, REPO, &[b.clone(), foreign.clone()]).unwrap();
    assert_eq!(narrowed.expected, vec![b.clone()], "only the trusted one");
    let refused = decide(&p, REPO, std::slice::from_ref(&foreign)).unwrap_err();
    assert!(matches!(refused, Refusal::ForeignKeys { .. }), "{refused}");
    let text = refused.to_string();
    assert!(
        text.contains(REPO) && text.contains(&foreign) && text.contains(&a),
        "names the repository, the foreign key and the expected ones: {text}"
    );
}

#[test]
fn a_repository_must_be_under_an_allowed_prefix_at_a_segment_boundary() {
    let k = key();
    let p = policy(&[&k], &["http://repo.example/stable"], false);
    let cases: &[(&str, bool)] = &[
        ("http://repo.example/stable/", true),
        ("http://repo.example/stable", true),
        ("HTTP://Repo.Example:80/stable/sub/", true),
        ("http://repo.example/stable-evil/", false),
        ("http://repo.example/stable/../unstable/", false),
        ("http://repo.example/stable/%2e%2e/unstable/", false),
        ("http://repo.example.evil.com/stable/", false),
        ("http://repo.example@evil.com/stable/", false),
        ("https://repo.example/stable/", false),
        ("http://repo.example:8080/stable/", false),
        ("file:///srv/repo/", false),
    ];
    for (url, ok) in cases {
        let got = decide(&p, url, &[]);
        assert_eq!(got.is_ok(), *ok, "{url}: {got:?}");
        if let Err(e) = got {
            assert!(e.to_string().contains(url), "{e}");
        }
    }
}

#[test]
fn nothing_is_trusted_without_keys_or_allow_unsigned() {
    let p = policy(&[], &[REPO], false);
    let refused = decide(&p, REPO, &[key()]).unwrap_err();
    assert!(matches!(refused, Refusal::NothingTrusted { .. }));
    assert!(refused.to_string().contains("--trusted-key"), "{refused}");
    assert!(decide_archive(&p, "http://repo.example/stable/packages/a--1.tar.gz").is_err());
}

#[test]
fn allow_unsigned_accepts_any_repository_unless_some_are_listed() {
    let open = policy(&[], &[], true);
    let grant = decide(&open, "http://anywhere.example/", &[]).unwrap();
    assert!(!grant.require_signature && grant.keys.is_empty());
    // Keys a target names still have to sign its index.
    let k = key();
    let signed = decide(&open, "http://anywhere.example/", std::slice::from_ref(&k)).unwrap();
    assert!(signed.require_signature);
    assert_eq!(signed.expected, vec![k]);
    let listed = policy(&[], &[REPO], true);
    assert!(decide(&listed, "http://anywhere.example/", &[]).is_err());
    assert!(decide_archive(&listed, "http://repo.example/stable/packages/a--1.tar.gz").is_ok());
    assert!(decide_archive(&listed, "http://anywhere.example/a--1.tar.gz").is_err());
}

#[test]
fn trusted_keys_with_allow_unsigned_check_a_signature_only_when_asked() {
    let k = key();
    let p = policy(&[&k], &[REPO], true);
    let grant = decide(&p, REPO, &[]).unwrap();
    assert_eq!(grant.expected, vec![k.clone()]);
    assert!(!grant.require_signature);
    assert!(decide(&p, REPO, &[k]).unwrap().require_signature);
    assert!(
        decide(&p, REPO, &[key()]).is_err(),
        "foreign keys stay refused"
    );
}

#[test]
fn bad_configuration_is_reported_with_its_origin() {
    let bad_key = TrustConfig {
        trusted_keys: vec!["AAAA".into()],
        ..Default::default()
    };
    let err = bad_key.policy("--trust-config /etc/t.yaml").unwrap_err();
    assert!(err.to_string().contains("/etc/t.yaml"), "{err}");
    let bad_repo = TrustConfig {
        allowed_repositories: vec!["ftp://x/".into()],
        ..Default::default()
    };
    let err = bad_repo.policy("flags").unwrap_err().to_string();
    assert!(err.contains("ftp://x/") && err.contains("http"), "{err}");
}

#[test]
fn a_configuration_file_is_yaml_or_json_and_merges_with_flags() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let yaml = dir.path().join("trust.yaml");
    std::fs::write(
        &yaml,
        format!("trustedKeys: [\"{k}\"]\nallowedRepositories:\n  - {REPO}\n"),
    )
    .unwrap();
    let from_file = TrustConfig::read(&yaml).unwrap();
    assert_eq!(from_file.trusted_keys, vec![k.clone()]);
    let json = dir.path().join("trust.json");
    std::fs::write(&json, r#"{"allowUnsigned": true}"#).unwrap();
    let merged = from_file.merged(TrustConfig::read(&json).unwrap());
    assert!(merged.allow_unsigned);
    assert_eq!(merged.allowed_repositories, vec![REPO.to_owned()]);
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, "trustedKey: [x]\n").unwrap();
    let err = TrustConfig::read(&typo).unwrap_err().to_string();
    assert!(
        err.contains("typo.yaml") && err.contains("trustedKey"),
        "{err}"
    );
}

#[test]
fn an_index_older_than_the_accepted_one_or_expired_is_refused() {
    let now: Timestamp = "2026-06-01T12:00:00Z".parse().unwrap();
    let later: Timestamp = "2026-06-08T12:00:00Z".parse().unwrap();
    let earlier: Timestamp = "2026-05-31T12:00:00Z".parse().unwrap();
    /// name, served version, expires, accepted version → refusal text
    type Case<'a> = (
        &'a str,
        u64,
        Option<Timestamp>,
        Option<u64>,
        Option<&'a str>,
    );
    let cases: &[Case<'_>] = &[
        ("first index", 3, None, None, None),
        ("same version again", 5, None, Some(5), None),
        ("newer version", 6, Some(later), Some(5), None),
        (
            "older version",
            3,
            None,
            Some(5),
            Some("older than accepted version 5"),
        ),
        ("expired", 6, Some(earlier), Some(5), Some("expired at")),
        (
            "expires exactly now",
            6,
            Some(now),
            None,
            Some("expired at"),
        ),
        (
            "a rollback is named first",
            3,
            Some(earlier),
            Some(5),
            Some("version 3"),
        ),
    ];
    for (name, version, expires, accepted, refused) in cases {
        let got = check_index(*version, *expires, *accepted, now);
        match refused {
            None => assert!(got.is_ok(), "{name}: {got:?}"),
            Some(text) => {
                let e = got.expect_err(name).to_string();
                assert!(e.contains(text), "{name}: {e}");
            }
        }
    }
}
