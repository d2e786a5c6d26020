//! Structure-aware mutations of JSON documents: replace, drop, add, retype,
//! nest and stretch values, so that inputs get past the parser into the
//! checks behind it.

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Map, Value, json};

use crate::engine::{NUMBERS, mutate, pick};

/// Tokens that byte-level mutations of JSON insert.
pub const TOKENS: &[&[u8]] = &[
    b"{", b"}", b"[", b"]", b",", b":", b"\"", b"null", b"true", b"\\u0000", b"\\ud800", b"\"\":",
    b"1e999", b"-",
];

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

fn nth<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
    if *n == 0 {
        return Some(v);
    }
    *n -= 1;
    match v {
        Value::Array(a) => a.iter_mut().find_map(|c| nth(c, n)),
        Value::Object(o) => o.values_mut().find_map(|c| nth(c, n)),
        _ => None,
    }
}

/// A node of `v` chosen at random.
fn node<'a>(rng: &mut StdRng, v: &'a mut Value) -> &'a mut Value {
    let mut n = rng.gen_range(0..count(v));
    nth(v, &mut n).expect("n is below the node count")
}

/// A scalar or small value: from `strings`, numbers at width edges, or odd
/// shapes.
pub fn value(rng: &mut StdRng, strings: &[&str]) -> Value {
    match rng.gen_range(0..12) {
        0 => Value::Null,
        1 => Value::Bool(rng.r#gen()),
        2 => serde_json::from_str(pick::<&str>(rng, NUMBERS)).unwrap_or(json!(u64::MAX)),
        3 => json!(rng.r#gen::<i64>()),
        4 => json!([]),
        5 => json!({}),
        6 => Value::String("x".repeat(rng.gen_range(300..5000))),
        7 => {
            let seed = pick(rng, strings).as_bytes();
            Value::String(String::from_utf8_lossy(&mutate(rng, seed, &[], &[])).into_owned())
        }
        _ => Value::String(pick(rng, strings).to_string()),
    }
}

/// Applies 1 to 4 structural mutations; `keys` are field names to add.
pub fn mutate_value(rng: &mut StdRng, doc: &mut Value, keys: &[&str], strings: &[&str]) {
    for _ in 0..rng.gen_range(1..=4) {
        let fresh = value(rng, strings);
        let target = node(rng, doc);
        match rng.gen_range(0..8) {
            0 | 1 => *target = fresh,
            2 => match target {
                Value::Object(o) if !o.is_empty() => {
                    let k = o.keys().nth(rng.gen_range(0..o.len())).unwrap().clone();
                    o.remove(&k);
                }
                Value::Array(a) if !a.is_empty() => {
                    a.remove(rng.gen_range(0..a.len()));
                }
                _ => *target = fresh,
            },
            3 => match target {
                Value::Object(o) => {
                    o.insert(pick(rng, keys).to_string(), fresh);
                }
                Value::Array(a) => a.push(fresh),
                _ => *target = json!([target.clone(), fresh]),
            },
            4 => {
                let inner = target.take();
                *target = if rng.r#gen() {
                    json!([inner])
                } else {
                    Value::Object(Map::from_iter([(pick(rng, keys).to_string(), inner)]))
                };
            }
            5 => {
                // Deep nesting, past the parser's recursion limit at times.
                let mut inner = target.take();
                for _ in 0..rng.gen_range(10..300) {
                    inner = json!([inner]);
                }
                *target = inner;
            }
            6 => {
                if let Value::Array(a) = target {
                    let copy = a.clone();
                    for _ in 0..rng.gen_range(1..50) {
                        a.extend(copy.iter().cloned());
                        if a.len() > 5000 {
                            break;
                        }
                    }
                } else {
                    *target = Value::Object(Map::new());
                }
            }
            _ => {
                *target = match target.take() {
                    Value::String(s) => s.parse::<f64>().map(|f| json!(f)).unwrap_or(json!([s])),
                    Value::Number(n) => json!(n.to_string()),
                    Value::Bool(b) => json!(b.to_string()),
                    other => json!(other.to_string()),
                }
            }
        }
    }
}

/// A mutated JSON document from `seed`: structural (when it parses) or
/// byte-level.
pub fn mutate_json(
    rng: &mut StdRng,
    seed: &[u8],
    others: &[Vec<u8>],
    keys: &[&str],
    strings: &[&str],
) -> Vec<u8> {
    match serde_json::from_slice::<Value>(seed) {
        Ok(mut doc) if rng.gen_ratio(3, 4) => {
            mutate_value(rng, &mut doc, keys, strings);
            let bytes = if rng.r#gen() {
                serde_json::to_vec(&doc)
            } else {
                serde_json::to_vec_pretty(&doc)
            };
            bytes.unwrap()
        }
        _ => mutate(rng, seed, others, TOKENS),
    }
}
