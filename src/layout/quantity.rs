//! Kubernetes quantities (`500m`, `4Gi`, `1.5`) as integers, so that the
//! capacity check is exact: CPU in millicores, memory and disk in bytes.

/// The value of `text` times 1000 (CPU in millicores), or `None` when it is
/// not a quantity.
pub fn milli(text: &str) -> Option<u64> {
    scaled(text, 1000)
}

/// The value of `text` (bytes), rounded up, or `None` when it is not a
/// quantity.
pub fn units(text: &str) -> Option<u64> {
    scaled(text, 1)
}

/// `text` × `unit`, rounded up to an integer.
fn scaled(text: &str, unit: u128) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let factor: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "m" => return ceil_div(decimal(number)?, 1000 * decimal_scale(number), unit),
        _ => return None,
    };
    ceil_div(decimal(number)? * factor, decimal_scale(number), unit)
}

/// `value / scale × unit`, rounded up.
fn ceil_div(value: u128, scale: u128, unit: u128) -> Option<u64> {
    u64::try_from((value * unit).div_ceil(scale)).ok()
}

/// The digits of a decimal number without its point (`1.5` → 15).
fn decimal(number: &str) -> Option<u128> {
    let mut parts = number.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next().unwrap_or("");
    if whole.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 9 {
        return None;
    }
    format!("{whole}{frac}").parse().ok()
}

/// 10^(digits after the point).
fn decimal_scale(number: &str) -> u128 {
    10u128.pow(number.split_once('.').map_or(0, |(_, f)| f.len() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(milli("2"), Some(2000));
        assert_eq!(milli("500m"), Some(500));
        assert_eq!(milli("1.5"), Some(1500));
        assert_eq!(units("4Gi"), Some(4 << 30));
        assert_eq!(units("1k"), Some(1000));
        assert_eq!(units("1.5Ki"), Some(1536));
        assert_eq!(units("100m"), Some(1));
        assert_eq!(units("lots"), None);
        assert_eq!(units("4GB"), None);
    }
}
