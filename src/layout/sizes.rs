//! The sizes at which a template has a layout, as ranges (`1`, `3-40`).
//!
//! Sizes are walked upwards from the template's minimum. A size whose
//! predecessor had a layout is first tried by adding one node of some kind
//! to that layout, checked exactly (cheap); only when that fails is the
//! integer program asked. When a size has no layout, one program with the
//! size free finds the next size that has one, so gaps cost one solve.

use super::ilp::{Level, Program, Size};
use super::kinds::{self, Kind};
use super::model::{Model, Rule};
use super::solve::{Error, all};

/// The largest size a template allows when it sets no maximum.
pub const DEFAULT_MAX_SIZE: u32 = 10_000;

/// The feasible sizes of `model` (its own `size` is ignored), as inclusive
/// ranges in increasing order.
pub fn feasible_sizes(model: &Model) -> Result<Vec<(u32, u32)>, Error> {
    let active = all(model);
    let kinds = kinds::enumerate(model, &active).map_err(|_| Error::TooManyKinds)?;
    let (mut n, hi) = bounds(model);
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    let mut last: Option<Vec<u32>> = None;
    let mut hint = 0;
    let program = |size| Program {
        model,
        active: &active,
        kinds: &kinds,
        groups: &[],
        size,
        max_change: None,
    };
    while n <= hi {
        let grown = last
            .as_ref()
            .and_then(|x| grow(model, &active, &kinds, x, n, &mut hint));
        let found = grown.or_else(|| {
            program(Size::Fixed(n))
                .minimise(Level::Size, &[])
                .map(|(c, _)| c.new)
        });
        match found {
            Some(x) => {
                match ranges.last_mut() {
                    Some(r) if r.1 + 1 == n => r.1 = n,
                    _ => ranges.push((n, n)),
                }
                last = Some(x);
                n += 1;
            }
            None if n == hi => break,
            None => match program(Size::Range(n + 1, hi)).minimise(Level::Size, &[]) {
                Some((c, _)) => {
                    // Found with the size free: record it and go on from there.
                    n = c.size;
                    last = None;
                }
                None => break,
            },
        }
    }
    Ok(ranges)
}

/// `1`, `3-40`.
pub fn format_ranges(ranges: &[(u32, u32)]) -> Vec<String> {
    ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect()
}

fn bounds(model: &Model) -> (u32, u32) {
    let mut lo = 1;
    let mut hi = DEFAULT_MAX_SIZE;
    for c in &model.constraints {
        match c.rule {
            Rule::SizeMin(n) => lo = lo.max(n),
            Rule::SizeMax(n) => hi = hi.min(n),
            _ => {}
        }
    }
    (lo, hi)
}

/// A layout of size `n` made by adding one node to `x` (size `n - 1`).
/// Tries the kind that worked last (`hint`) first.
fn grow(
    model: &Model,
    active: &[bool],
    kinds: &[Kind],
    x: &[u32],
    n: u32,
    hint: &mut usize,
) -> Option<Vec<u32>> {
    let mut y = x.to_vec();
    for j in std::iter::once(*hint).chain(0..kinds.len()) {
        y[j] += 1;
        if kinds::counts_ok(model, active, kinds, &y, n) {
            *hint = j;
            return Some(y);
        }
        y[j] -= 1;
    }
    None
}
