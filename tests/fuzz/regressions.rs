//! Inputs the fuzzers found, each kept as a named test (the corpus replays
//! them too).

use crate::index;

/// `%2e%2e` is `..` to the HTTP client (URLs are normalized before the
/// request), so an index entry `%2e%2e/%2e%2e/x.tar.gz` passed the
/// fetcher's `..` check and fetched from outside the repository's path.
#[test]
fn an_index_path_with_percent_encoded_dot_dot_stays_in_the_repository() {
    let mut check = index::checker();
    for path in [
        "%2e%2e/%2e%2e/x--1.tar.gz",
        "packages/.%2E/%2e./x--1.tar.gz",
        "%2E%2e/x--1.tar.gz",
    ] {
        let entry = format!(
            r#"{{"version":1,"packages":[{{"id":"x--1","sha256":"00","size":1,"path":"{path}"}}]}}"#
        );
        assert_eq!(check(entry.as_bytes()), Ok(()), "{path}");
    }
}
