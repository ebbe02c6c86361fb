//! Kernel names as scenarios see them: specs (`debian:6.1`, `build:DIR`, a
//! path), glob patterns over specs (`debian:6.*`), the series that picks a
//! per-kernel snapshot, and a file-name-safe slug.
//!
//! Pure string handling: resolving a spec to an image is the runner's job.

/// A glob over kernel specs: `*` matches any run of characters, `?` one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPattern {
    pattern: String,
}

impl KernelPattern {
    /// Checks the pattern; the error is one sentence.
    pub fn new(pattern: &str) -> Result<KernelPattern, String> {
        if pattern.trim().is_empty() {
            return Err("an empty kernel pattern matches nothing: remove it or write `*`".into());
        }
        if pattern.chars().any(char::is_whitespace) {
            return Err(format!("kernel pattern `{pattern}` contains white space"));
        }
        Ok(KernelPattern {
            pattern: pattern.to_owned(),
        })
    }

    /// Whether `spec` matches.
    pub fn matches(&self, spec: &str) -> bool {
        glob(self.pattern.as_bytes(), spec.as_bytes())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }
}

/// Iterative glob match with single-star backtracking (linear in practice).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The series a spec names (`debian:6.12` → `6.12`), used for
/// `<name>@<series>.snap`; `None` for local kernels.
pub fn series_of(spec: &str) -> Option<&str> {
    let series = spec.strip_prefix("debian:")?;
    let mut parts = series.split('.');
    let numeric =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (numeric(parts.next()) && numeric(parts.next()) && parts.next().is_none()).then_some(series)
}

/// A file-name-safe form of a spec: `debian:6.1` → `debian-6.1`,
/// `/boot/vmlinuz-6.1` → `boot-vmlinuz-6.1`.
pub fn slug(spec: &str) -> String {
    let mut out = String::with_capacity(spec.len());
    for c in spec.chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches(|c| c == '-' || c == '.');
    if trimmed.is_empty() {
        "kernel".into()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let p = |s| KernelPattern::new(s).unwrap();
        assert!(p("debian:6.*").matches("debian:6.1"));
        assert!(p("debian:6.*").matches("debian:6.12"));
        assert!(!p("debian:6.*").matches("debian:5.10"));
        assert!(p("debian:6.1").matches("debian:6.1"));
        assert!(!p("debian:6.1").matches("debian:6.12"));
        assert!(p("*").matches("/boot/vmlinuz"));
        assert!(p("debian:?.1*").matches("debian:6.12"));
        assert!(p("*:*.1*").matches("debian:6.1"));
        assert!(KernelPattern::new("").is_err());
        assert!(KernelPattern::new("a b").is_err());
    }

    #[test]
    fn series_and_slugs() {
        assert_eq!(series_of("debian:6.12"), Some("6.12"));
        assert_eq!(series_of("debian:host"), None);
        assert_eq!(series_of("debian:6"), None);
        assert_eq!(series_of("/boot/vmlinuz"), None);
        assert_eq!(slug("debian:6.1"), "debian-6.1");
        assert_eq!(slug("/boot/vmlinuz-6.1"), "boot-vmlinuz-6.1");
        assert_eq!(slug("build:/src/linux"), "build-src-linux");
        assert_eq!(slug("::"), "kernel");
    }
}
