//! Node kinds: the valid (service set, node class) pairs a node may be.
//!
//! A depth-first walk over the services in order decides, for each class,
//! whether each service joins the set, and prunes as soon as a
//! cantCoexist group has two members, a service is barred from the class,
//! a service's count maximum is zero, or the capacity is exceeded.
//! mustCoexist groups are checked when a member is left out after another
//! was taken, and at the end.

use super::model::{Model, Rule};

/// The most node kinds the solver works with. Past it the template leaves
/// too many services free to share nodes; a layout rule or nodeClasses
/// entry narrows it.
pub const MAX_KINDS: usize = 20_000;

/// One valid way a node can be: a non-empty set of services on a class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Kind {
    /// The node class index (its preference rank).
    pub class: usize,
    /// The services, bit `i` for service `i`.
    pub set: u64,
}

/// The per-node rules of the active constraints, compiled for the walk.
struct Rules {
    cant: Vec<u64>,
    must: Vec<u64>,
    /// Per service: a bit per class it may run on.
    classes: Vec<u64>,
    /// Services whose count maximum is zero.
    absent: u64,
    /// Per class: its capacity, when a Capacity rule is active.
    capacity: Vec<Option<[Option<u64>; 3]>>,
}

fn compile(model: &Model, active: &[bool]) -> Rules {
    let all_classes = if model.classes.len() >= 64 {
        u64::MAX
    } else {
        (1u64 << model.classes.len()) - 1
    };
    let mut rules = Rules {
        cant: Vec::new(),
        must: Vec::new(),
        classes: vec![all_classes; model.services.len()],
        absent: 0,
        capacity: vec![None; model.classes.len()],
    };
    let mask = |members: &[usize]| members.iter().fold(0u64, |m, &s| m | 1 << s);
    for (c, on) in model.constraints.iter().zip(active) {
        if !on {
            continue;
        }
        match &c.rule {
            Rule::CantCoexist(members) => rules.cant.push(mask(members)),
            Rule::MustCoexist(members) => rules.must.push(mask(members)),
            Rule::NodeClasses { s, allowed } => rules.classes[*s] &= mask(allowed),
            Rule::CountMax { s, n: 0 } => rules.absent |= 1 << s,
            Rule::Capacity { class } => {
                rules.capacity[*class] = Some(model.classes[*class].capacity)
            }
            _ => {}
        }
    }
    rules
}

/// Every valid kind under the active constraints, ordered by class, then
/// by set. `Err(n)` when there are more than [`MAX_KINDS`].
pub fn enumerate(model: &Model, active: &[bool]) -> Result<Vec<Kind>, usize> {
    let rules = compile(model, active);
    let mut kinds = Vec::new();
    for class in 0..model.classes.len() {
        let mut walk = Walk {
            model,
            rules: &rules,
            class,
            kinds: &mut kinds,
            used: [0; 3],
        };
        if !walk.go(0, 0) {
            return Err(MAX_KINDS + 1);
        }
    }
    Ok(kinds)
}

struct Walk<'a> {
    model: &'a Model,
    rules: &'a Rules,
    class: usize,
    kinds: &'a mut Vec<Kind>,
    used: [u64; 3],
}

impl Walk<'_> {
    /// Decides service `i` onwards; false when the kind limit was hit.
    fn go(&mut self, i: usize, set: u64) -> bool {
        let n = self.model.services.len();
        if i == n {
            if set != 0
                && self
                    .rules
                    .must
                    .iter()
                    .all(|&g| g & set == 0 || g & set == g)
            {
                if self.kinds.len() >= MAX_KINDS {
                    return false;
                }
                self.kinds.push(Kind {
                    class: self.class,
                    set,
                });
            }
            return true;
        }
        let decided = (1u64 << (i + 1)) - 1;
        // Leave service i out, unless a mustCoexist group already has a member.
        let out_ok = self
            .rules
            .must
            .iter()
            .all(|&g| g & (1 << i) == 0 || g & set & decided == 0);
        if out_ok && !self.go(i + 1, set) {
            return false;
        }
        if self.can_take(i, set) {
            let uses = self.model.services[i].uses;
            (0..3).for_each(|r| self.used[r] += uses[r]);
            let ok = self.go(i + 1, set | 1 << i);
            (0..3).for_each(|r| self.used[r] -= uses[r]);
            return ok;
        }
        true
    }

    fn can_take(&self, i: usize, set: u64) -> bool {
        let bit = 1u64 << i;
        let rules = self.rules;
        if rules.absent & bit != 0 || rules.classes[i] & (1 << self.class) == 0 {
            return false;
        }
        if rules.cant.iter().any(|&g| g & bit != 0 && g & set != 0) {
            return false;
        }
        // A mustCoexist group whose earlier member was left out.
        let before = bit - 1;
        if rules
            .must
            .iter()
            .any(|&g| g & bit != 0 && g & before != 0 && g & before & set == 0)
        {
            return false;
        }
        match rules.capacity[self.class] {
            None => true,
            Some(cap) => {
                let uses = self.model.services[i].uses;
                (0..3).all(|r| cap[r].is_none_or(|c| self.used[r] + uses[r] <= c))
            }
        }
    }
}

/// Whether node counts per kind keep every active count, ratio and size
/// rule at size `n`, in exact integer arithmetic.
pub fn counts_ok(model: &Model, active: &[bool], kinds: &[Kind], x: &[u32], n: u32) -> bool {
    if x.iter().map(|&v| v as u64).sum::<u64>() != n as u64 {
        return false;
    }
    let mut counts = vec![0u64; model.services.len()];
    for (k, &v) in kinds.iter().zip(x) {
        let mut set = k.set;
        while set != 0 {
            counts[set.trailing_zeros() as usize] += v as u64;
            set &= set - 1;
        }
    }
    let count = |s: usize| counts[s];
    let base = |of: Option<usize>| of.map_or(n as u64, count);
    model
        .constraints
        .iter()
        .zip(active)
        .filter(|(_, on)| **on)
        .all(|(c, _)| match c.rule {
            Rule::SizeMin(m) => n >= m,
            Rule::SizeMax(m) => n <= m,
            Rule::CountMin { s, n: m } => count(s) >= m as u64,
            Rule::CountMax { s, n: m } => count(s) <= m as u64,
            Rule::RatioMin { s, of, per, n: m } => per as u64 * count(s) >= m as u64 * base(of),
            Rule::RatioMax { s, of, per, n: m } => per as u64 * count(s) <= m as u64 * base(of),
            _ => true,
        })
}
