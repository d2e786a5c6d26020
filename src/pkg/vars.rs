//! `${KEY}` variables, as services' argv, health checks, capability
//! probes, storage tasks and applications' run templates use them.

use std::collections::BTreeMap;

/// Replaces every `${KEY}` in `text` with its value from `vars`; the error
/// is the first key `vars` lacks. An unclosed `${` is kept as it is.
pub fn expand<'t>(text: &'t str, vars: &BTreeMap<String, String>) -> Result<String, &'t str> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let key = &after[..end];
        out.push_str(vars.get(key).ok_or(key)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_are_replaced_the_first_unknown_is_named_and_an_open_brace_is_kept() {
        let vars: BTreeMap<String, String> = [("A".to_owned(), "1".to_owned())].into();
        assert_eq!(expand("x${A}y${A}", &vars), Ok("x1y1".to_owned()));
        assert_eq!(expand("${A}${B}", &vars), Err("B"));
        assert_eq!(expand("a${A", &vars), Ok("a${A".to_owned()));
    }
}
