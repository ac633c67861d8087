//! Just enough of Kubernetes' resource quantities for validation: CPU in millicores (is it a
//! whole number of CPUs?) and memory in bytes (is it well formed?). The API server has already
//! checked the syntax of typed `Quantity` fields; this reads their value.

/// Parses a CPU quantity (`2`, `500m`, `1.5`, `2000m`) into millicores.
pub fn cpu_millis(q: &str) -> Option<i64> {
    let q = q.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<i64>().ok().filter(|v| *v >= 0);
    }
    let v = q
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)?;
    let millis = v * 1000.0;
    (millis.fract().abs() < 1e-6).then_some(millis.round() as i64)
}

/// Whole CPUs of a quantity, `None` when it is not a whole number (`1500m`, `0.5`) or zero.
pub fn whole_cpus(q: &str) -> Option<i64> {
    cpu_millis(q)
        .filter(|m| *m > 0 && m % 1000 == 0)
        .map(|m| m / 1000)
}

/// Parses a memory quantity (`512Mi`, `1G`, `1e9`, `1000`) into bytes.
pub fn memory_bytes(q: &str) -> Option<u128> {
    let q = q.trim();
    const SUFFIXES: [(&str, u128); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    for (s, mul) in SUFFIXES {
        if let Some(n) = q.strip_suffix(s) {
            let v = n
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)?;
            return Some((v * mul as f64) as u128);
        }
    }
    let v = q
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)?;
    Some(v as u128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("500m"), Some(500));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(whole_cpus("4"), Some(4));
        assert_eq!(whole_cpus("2000m"), Some(2));
        assert_eq!(whole_cpus("1500m"), None);
        assert_eq!(whole_cpus("0.5"), None);
        assert_eq!(whole_cpus("0"), None);
        assert_eq!(cpu_millis("two"), None);
    }

    #[test]
    fn memory() {
        assert_eq!(memory_bytes("64Mi"), Some(64 << 20));
        assert_eq!(memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(memory_bytes("1e3"), Some(1000));
        assert_eq!(memory_bytes("lots"), None);
    }
}
