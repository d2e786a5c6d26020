//! The key-value primitives under the driver: requests with retries,
//! paged consistent range reads, and transactions of publisher operations.

use std::collections::BTreeMap;

use etcd_client::{
    DeleteOptions, DeleteResponse, GetOptions, GetResponse, PutOptions, Txn, TxnOp, TxnResponse,
};

use super::{PAGE, Tree, TreeError, parse_json};
use crate::discovery::diff::{Have, Op};

/// One key and its value, as read from etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value's text.
    pub value: String,
    /// The lease it hangs on, 0 for none.
    pub lease: i64,
}

/// A consistent read of a range: its keys and the revision they are at.
#[derive(Clone, Debug, Default)]
pub struct Range {
    /// The keys, in key order.
    pub entries: Vec<Entry>,
    /// The store revision of the read; watch from `revision + 1`.
    pub revision: i64,
}

impl Range {
    /// The entries as the diff's "actual" side.
    pub fn actual(&self) -> BTreeMap<String, Have> {
        self.entries
            .iter()
            .map(|e| {
                let have = Have {
                    value: e.value.clone(),
                    lease: e.lease,
                };
                (e.key.clone(), have)
            })
            .collect()
    }
}

impl Tree {
    pub(super) async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse, TreeError> {
        self.call(what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    pub(super) async fn get(
        &self,
        what: &str,
        key: &str,
        options: Option<GetOptions>,
    ) -> Result<GetResponse, TreeError> {
        self.call(what, |mut c| {
            let (key, options) = (key.to_owned(), options.clone());
            async move { c.get(key, options).await }
        })
        .await
    }

    pub(super) async fn delete(
        &self,
        what: &str,
        key: &str,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteResponse, TreeError> {
        self.call(what, |mut c| {
            let (key, options) = (key.to_owned(), options.clone());
            async move { c.delete(key, options).await }
        })
        .await
    }
    /// Applies operations in one transaction; leased puts use `lease`.
    pub async fn apply(&self, ops: &[Op], lease: i64) -> Result<(), TreeError> {
        let txn_ops: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, leased } => {
                    let options = leased.then(|| PutOptions::new().with_lease(lease));
                    TxnOp::put(key.clone(), value.clone(), options)
                }
                Op::Delete { key } => TxnOp::delete(key.clone(), None),
            })
            .collect();
        let txn = Txn::new().and_then(txn_ops);
        self.txn("write transaction", txn).await?;
        Ok(())
    }

    /// Reads every key under `prefix` at one revision, page by page.
    pub async fn range(&self, prefix: &str) -> Result<Range, TreeError> {
        let end = prefix_end(prefix);
        let mut range = Range::default();
        let mut from = prefix.to_owned();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if range.revision > 0 {
                options = options.with_revision(range.revision);
            }
            let response = self.get("read range", &from, Some(options)).await?;
            if range.revision == 0 {
                range.revision = response.header().map_or(0, |h| h.revision());
            }
            for kv in response.kvs() {
                range.entries.push(Entry {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    value: String::from_utf8_lossy(kv.value()).into_owned(),
                    lease: kv.lease(),
                });
            }
            match (response.more(), range.entries.last()) {
                (true, Some(last)) => from = format!("{}\0", last.key),
                _ => return Ok(range),
            }
        }
    }

    pub(super) async fn keys(&self, prefix: &str) -> Result<Vec<String>, TreeError> {
        let options = GetOptions::new().with_prefix().with_keys_only();
        let response = self.get("list keys", prefix, Some(options)).await?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect())
    }

    pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, TreeError> {
        let response = self.get("read key", key, None).await?;
        match response.kvs().first() {
            None => Ok(None),
            Some(kv) => parse_json(key, &String::from_utf8_lossy(kv.value())).map(Some),
        }
    }
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_end_is_the_prefix_with_its_last_byte_incremented() {
        assert_eq!(prefix_end("/services/"), b"/services0".to_vec());
        assert_eq!(prefix_end("a"), b"b".to_vec());
    }
}
