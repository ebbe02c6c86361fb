//! The record a kernel build leaves next to its output
//! (`<out>/kestrel-build.manifest`), and SHA-256 for its config hash.
//!
//! Invariant: the manifest is written after a successful build only, so a
//! manifest whose `config_sha256` matches the `.config` beside it describes
//! the image there. Stored as `key = "value"` lines like the cache's.

use std::fmt::Write as _;
use std::path::Path;

use crate::cache::{escape, unescape};

/// File name of the manifest in a build output directory.
pub const MANIFEST_FILE: &str = "kestrel-build.manifest";

/// What one `kernel build` produced.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildManifest {
    /// `make kernelrelease`.
    pub release: String,
    /// SHA-256 of the final `.config`, hex.
    pub config_sha256: String,
    /// The source tree.
    pub source: String,
    /// `git rev-parse HEAD` when the source is a git tree (with `-dirty`
    /// when it has uncommitted changes).
    pub git_revision: Option<String>,
    /// `tinyconfig` or `defconfig`.
    pub base: String,
    /// The fragments merged over the base, in order.
    pub fragments: Vec<String>,
    /// Wall time of the whole build (configuration included), seconds.
    pub build_seconds: f64,
    /// RFC 3339, UTC.
    pub built_at: String,
    /// The bootable images, relative to the output directory.
    pub bzimage: String,
    pub vmlinux: String,
    /// Whether modules were built (the config has `=m` symbols).
    pub modules: bool,
}

impl BuildManifest {
    pub fn to_text(&self) -> String {
        let mut out = String::from("# Kestrel kernel build\n");
        let mut put = |k: &str, v: &str| {
            let _ = writeln!(out, "{k} = \"{}\"", escape(v));
        };
        put("release", &self.release);
        put("config_sha256", &self.config_sha256);
        put("source", &self.source);
        if let Some(rev) = &self.git_revision {
            put("git_revision", rev);
        }
        put("base", &self.base);
        for f in &self.fragments {
            put("fragment", f);
        }
        put("build_seconds", &format!("{:.1}", self.build_seconds));
        put("built_at", &self.built_at);
        put("bzimage", &self.bzimage);
        put("vmlinux", &self.vmlinux);
        put("modules", if self.modules { "yes" } else { "no" });
        out
    }

    /// Parses manifest text; the error names the offending line or key.
    pub fn from_text(text: &str) -> Result<BuildManifest, String> {
        let mut m = BuildManifest {
            release: String::new(),
            config_sha256: String::new(),
            source: String::new(),
            git_revision: None,
            base: String::new(),
            fragments: Vec::new(),
            build_seconds: 0.0,
            built_at: String::new(),
            bzimage: String::new(),
            vmlinux: String::new(),
            modules: false,
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || format!("line {} is not `key = \"value\"`", n + 1);
            let (key, value) = line.split_once('=').ok_or_else(bad)?;
            let value = unescape(value.trim()).ok_or_else(bad)?;
            match key.trim() {
                "release" => m.release = value,
                "config_sha256" => m.config_sha256 = value,
                "source" => m.source = value,
                "git_revision" => m.git_revision = Some(value),
                "base" => m.base = value,
                "fragment" => m.fragments.push(value),
                "build_seconds" => {
                    m.build_seconds = value
                        .parse()
                        .map_err(|_| "build_seconds is not a number".to_owned())?
                }
                "built_at" => m.built_at = value,
                "bzimage" => m.bzimage = value,
                "vmlinux" => m.vmlinux = value,
                "modules" => m.modules = value == "yes",
                _ => {}
            }
        }
        for (key, v) in [("release", &m.release), ("config_sha256", &m.config_sha256)] {
            if v.is_empty() {
                return Err(format!("no {key}"));
            }
        }
        Ok(m)
    }

    /// Reads `<out>/kestrel-build.manifest`; `None` when there is none or
    /// it does not parse.
    pub fn read(out: &Path) -> Option<BuildManifest> {
        let text = std::fs::read_to_string(out.join(MANIFEST_FILE)).ok()?;
        BuildManifest::from_text(&text).ok()
    }
}

/// SHA-256 of `data` as lower-case hex (FIPS 180-4).
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(v);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_vectors() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            sha256_hex(&[b'a'; 1000]),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
        );
    }

    #[test]
    fn manifest_round_trips() {
        let m = BuildManifest {
            release: "6.1.176".into(),
            config_sha256: sha256_hex(b"CONFIG_64BIT=y\n"),
            source: "/src/linux \"x\"".into(),
            git_revision: Some("0123abcd-dirty".into()),
            base: "tinyconfig".into(),
            fragments: vec!["kestrel".into(), "/home/me/extra.config".into()],
            build_seconds: 391.5,
            built_at: "2026-11-22T01:30:00Z".into(),
            bzimage: "arch/x86/boot/bzImage".into(),
            vmlinux: "vmlinux".into(),
            modules: false,
        };
        assert_eq!(BuildManifest::from_text(&m.to_text()).unwrap(), m);
        assert_eq!(
            BuildManifest::from_text("release = \"x\"\n").unwrap_err(),
            "no config_sha256"
        );
        assert!(BuildManifest::from_text("release = x\n").is_err());
    }
}
