//! Config fragments, the final `.config`, and why Kconfig dropped a symbol.
//!
//! Kconfig silently drops a requested option whose dependencies are off
//! (design.md §2), so after merging every requirement is checked against
//! the final `.config` ([`verify`]); each unmet one is explained
//! ([`Kconfig::explain`]) from the tree's own Kconfig files: the entry's
//! `depends on` lines (with enclosing `if`/`menu`/`choice` conditions)
//! evaluated against the `.config`, naming the terms that are false, or
//! the entries that `select` a symbol asked to be off.
//!
//! Invariants: parsing never fails (unknown lines are ignored, as
//! `merge_config.sh` does); a later requirement for the same symbol
//! replaces an earlier one; a requested `=m` is met by `=y` when the
//! configuration has no module support (Kconfig builds it in).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// One line a fragment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Without the `CONFIG_` prefix.
    pub symbol: String,
    /// `y`, `m`, `n` (for `# CONFIG_X is not set`), or the value as written
    /// (strings keep their quotes).
    pub value: String,
    /// `file:line` it came from.
    pub origin: String,
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value == "n" {
            write!(f, "# CONFIG_{} is not set", self.symbol)
        } else {
            write!(f, "CONFIG_{}={}", self.symbol, self.value)
        }
    }
}

/// `CONFIG_X=v` or `# CONFIG_X is not set` → (symbol, value).
fn parse_line(line: &str) -> Option<(&str, &str)> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# CONFIG_") {
        let symbol = rest.strip_suffix(" is not set")?;
        return is_symbol(symbol).then_some((symbol, "n"));
    }
    let (symbol, value) = line.strip_prefix("CONFIG_")?.split_once('=')?;
    is_symbol(symbol).then_some((symbol, value.trim()))
}

fn is_symbol(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The requirements of one fragment, in file order; `name` labels origins.
pub fn parse_fragment(name: &str, text: &str) -> Vec<Requirement> {
    text.lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let (symbol, value) = parse_line(line)?;
            Some(Requirement {
                symbol: symbol.to_owned(),
                value: value.to_owned(),
                origin: format!("{name}:{}", n + 1),
            })
        })
        .collect()
}

/// Requirements of several fragments in merge order: a later one for the
/// same symbol replaces the earlier one (as `merge_config.sh` does).
pub fn merge(fragments: &[Vec<Requirement>]) -> Vec<Requirement> {
    let mut out: Vec<Requirement> = Vec::new();
    for r in fragments.iter().flatten() {
        out.retain(|o| o.symbol != r.symbol);
        out.push(r.clone());
    }
    out
}

/// A final `.config`: symbol → value (`n` for `is not set`); symbols
/// Kconfig did not write (invisible ones) are absent, which also means off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DotConfig {
    values: HashMap<String, String>,
}

impl DotConfig {
    pub fn parse(text: &str) -> DotConfig {
        let values = text
            .lines()
            .filter_map(parse_line)
            .map(|(s, v)| (s.to_owned(), v.to_owned()))
            .collect();
        DotConfig { values }
    }

    /// The value as written, `None` when absent.
    pub fn get(&self, symbol: &str) -> Option<&str> {
        self.values.get(symbol).map(String::as_str)
    }

    /// Whether the symbol is `y` or `m`.
    pub fn is_on(&self, symbol: &str) -> bool {
        matches!(self.get(symbol), Some("y" | "m"))
    }

    /// Whether any symbol is `=m` (then modules get built).
    pub fn has_modules(&self) -> bool {
        self.values.values().any(|v| v == "m")
    }

    /// The value for messages: `y`, `m`, `is not set` (also when absent), or the value.
    fn describe(&self, symbol: &str) -> String {
        match self.get(symbol) {
            None | Some("n") => "is not set".to_owned(),
            Some(v) => format!("={v}"),
        }
    }
}

/// A requirement the final `.config` does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    pub requirement: Requirement,
    /// The value in `.config` (`None` when Kconfig did not write it).
    pub actual: Option<String>,
}

/// Every requirement the configuration does not meet, in requirement order.
pub fn verify(requirements: &[Requirement], config: &DotConfig) -> Vec<Unmet> {
    let modules = config.is_on("MODULES");
    requirements
        .iter()
        .filter(|r| {
            let actual = config.get(&r.symbol).unwrap_or("n");
            let met = match r.value.as_str() {
                "n" => actual == "n",
                "m" if !modules => actual == "m" || actual == "y",
                want => actual == want,
            };
            !met
        })
        .map(|r| Unmet {
            requirement: r.clone(),
            actual: config.get(&r.symbol).map(str::to_owned),
        })
        .collect()
}

/// What the Kconfig files say about one symbol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// `path:line` of each definition.
    pub defined_at: Vec<String>,
    /// Every condition the entry needs: its `depends on` lines and those
    /// of the enclosing `if`/`menu`/`choice` blocks.
    pub depends: Vec<String>,
    /// `SYMBOL [if COND]` of each entry that selects it.
    pub selected_by: Vec<String>,
}

/// The Kconfig entries of a tree that matter for a set of symbols.
#[derive(Debug, Clone, Default)]
pub struct Kconfig {
    entries: BTreeMap<String, Entry>,
}

impl Kconfig {
    /// Scans the Kconfig files of a kernel tree for `symbols` (only
    /// `arch/x86` among the architectures).
    pub fn scan(src: &Path, symbols: &[&str]) -> Kconfig {
        let mut k = Kconfig::default();
        let mut files = Vec::new();
        kconfig_files(src, src, &mut files);
        files.sort();
        for file in files {
            if let Ok(text) = std::fs::read_to_string(&file) {
                let rel = file.strip_prefix(src).unwrap_or(&file);
                k.add_file(&rel.to_string_lossy(), &text, symbols);
            }
        }
        k
    }

    /// Adds what one Kconfig file says about `symbols`.
    pub fn add_file(&mut self, name: &str, text: &str, symbols: &[&str]) {
        #[derive(Clone, Copy, PartialEq)]
        enum Open {
            Block,
            Entry,
        }
        let wanted = |s: &str| symbols.contains(&s);
        // Conditions of the enclosing blocks; each level is one block.
        let mut blocks: Vec<(&str, Vec<String>)> = Vec::new();
        // The entry being read: its symbol and own conditions.
        let mut current: Option<(String, Vec<String>)> = None;
        let mut open = Open::Block;
        let mut help_indent: Option<Option<usize>> = None;
        let lines = logical_lines(text);
        let finish = |current: &mut Option<(String, Vec<String>)>,
                      blocks: &[(&str, Vec<String>)],
                      entries: &mut BTreeMap<String, Entry>| {
            if let Some((symbol, own)) = current.take() {
                if wanted(&symbol) {
                    let e = entries.entry(symbol).or_default();
                    let inherited = blocks.iter().flat_map(|(_, d)| d.iter().cloned());
                    for d in inherited.chain(own) {
                        if !e.depends.contains(&d) {
                            e.depends.push(d);
                        }
                    }
                }
            }
        };
        for (number, raw) in &lines {
            let indent = raw.len() - raw.trim_start().len();
            let line = raw.trim();
            if let Some(state) = help_indent {
                if line.is_empty() {
                    continue;
                }
                match state {
                    None => {
                        help_indent = Some(Some(indent));
                        continue;
                    }
                    Some(i) if indent >= i => continue,
                    Some(_) => help_indent = None,
                }
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line
                .split_once(char::is_whitespace)
                .map_or((line, ""), |(k, r)| (k, r.trim()));
            match keyword {
                "config" | "menuconfig" => {
                    finish(&mut current, &blocks, &mut self.entries);
                    let symbol = rest.to_owned();
                    if wanted(&symbol) {
                        self.entries
                            .entry(symbol.clone())
                            .or_default()
                            .defined_at
                            .push(format!("{name}:{number}"));
                    }
                    current = Some((symbol, Vec::new()));
                    open = Open::Entry;
                }
                "if" => {
                    finish(&mut current, &blocks, &mut self.entries);
                    blocks.push(("if", vec![strip_comment(rest)]));
                    open = Open::Block;
                }
                "menu" | "choice" => {
                    finish(&mut current, &blocks, &mut self.entries);
                    blocks.push((keyword, Vec::new()));
                    open = Open::Block;
                }
                "endif" | "endmenu" | "endchoice" => {
                    finish(&mut current, &blocks, &mut self.entries);
                    blocks.pop();
                    open = Open::Block;
                }
                "comment" | "source" | "mainmenu" => {
                    finish(&mut current, &blocks, &mut self.entries);
                    open = Open::Block;
                }
                "help" | "---help---" => help_indent = Some(None),
                "depends" => {
                    let cond = strip_comment(rest.strip_prefix("on").unwrap_or(rest).trim());
                    match (open, current.as_mut(), blocks.last_mut()) {
                        (Open::Entry, Some((_, own)), _) => own.push(cond),
                        (Open::Block, _, Some((_, deps))) => deps.push(cond),
                        _ => {}
                    }
                }
                "select" => {
                    let target = rest.split_whitespace().next().unwrap_or("");
                    if wanted(target) {
                        if let Some((symbol, _)) = &current {
                            let by = match rest.split_once(" if ") {
                                Some((_, cond)) => format!("{symbol} if {}", cond.trim()),
                                None => symbol.clone(),
                            };
                            self.entries
                                .entry(target.to_owned())
                                .or_default()
                                .selected_by
                                .push(by);
                        }
                    }
                }
                _ => {}
            }
        }
        finish(&mut current, &blocks, &mut self.entries);
    }

    pub fn entry(&self, symbol: &str) -> Option<&Entry> {
        self.entries
            .get(symbol)
            .filter(|e| !e.defined_at.is_empty())
    }

    /// One clause saying why `unmet` happened.
    pub fn explain(&self, unmet: &Unmet, config: &DotConfig) -> String {
        let r = &unmet.requirement;
        let Some(entry) = self.entry(&r.symbol) else {
            return "no Kconfig file in this tree defines it (misspelt, or not in this kernel version)"
                .to_owned();
        };
        let actual = config.describe(&r.symbol);
        if r.value == "n" {
            let selectors: Vec<&String> = entry
                .selected_by
                .iter()
                .filter(|s| {
                    let sym = s.split_whitespace().next().unwrap_or("");
                    config.is_on(sym)
                })
                .collect();
            return if selectors.is_empty() {
                format!("it {actual}: something forces it on (a default or a select)")
            } else {
                let list: Vec<&str> = selectors.iter().map(|s| s.as_str()).collect();
                format!("it {actual} because it is selected by {}", list.join(", "))
            };
        }
        let failing: Vec<String> = entry
            .depends
            .iter()
            .filter_map(|d| {
                let expr = Expr::parse(d)?;
                (expr.eval(config) < Tri::needed(&r.value)).then(|| {
                    let blame = expr.blame(config, Tri::needed(&r.value));
                    if blame.is_empty() {
                        format!("`depends on {d}` is not met")
                    } else {
                        format!("`depends on {d}` is not met ({})", blame.join(", "))
                    }
                })
            })
            .collect();
        if failing.is_empty() {
            let deps = if entry.depends.is_empty() {
                "no dependencies".to_owned()
            } else {
                format!("depends on {}", entry.depends.join(" && "))
            };
            return format!(
                "it {actual} ({deps}; defined at {}): check its type, range or choice group",
                entry.defined_at.join(", ")
            );
        }
        format!("it {actual}: {}", failing.join("; "))
    }
}

/// Every file `make <base>config` + `olddefconfig` reads for x86: the
/// Kconfig files, the kconfig tool's sources, the top and x86 Makefiles
/// and the stock fragments and defconfigs. Their sizes and mtimes key the
/// configuration stamp of a build.
pub fn config_inputs(src: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    kconfig_files(src, src, &mut files);
    for dir in ["scripts/kconfig", "kernel/configs", "arch/x86/configs"] {
        if let Ok(read) = std::fs::read_dir(src.join(dir)) {
            files.extend(read.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    files.extend(["Makefile", "arch/x86/Makefile"].map(|f| src.join(f)));
    files.sort();
    files
}

/// Kconfig files under `dir`, skipping `.git`, `Documentation`, `tools` and
/// every architecture but x86.
fn kconfig_files(src: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    for e in read.flatten() {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            let rel = path.strip_prefix(src).unwrap_or(&path);
            let skip = matches!(rel.to_str(), Some(".git" | "Documentation" | "tools"))
                || (rel.starts_with("arch") && rel.components().count() == 2 && name != "x86");
            if !skip {
                kconfig_files(src, &path, out);
            }
        } else if kind.is_file() && name.starts_with("Kconfig") {
            out.push(path);
        }
    }
}

/// Lines with `\` continuations joined, numbered from 1 by their first line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let (start, mut acc) = pending.take().unwrap_or((n + 1, String::new()));
        match line.strip_suffix('\\') {
            Some(head) => {
                acc.push_str(head);
                acc.push(' ');
                pending = Some((start, acc));
            }
            None => {
                acc.push_str(line);
                out.push((start, acc));
            }
        }
    }
    out.extend(pending);
    out
}

fn strip_comment(s: &str) -> String {
    s.split('#').next().unwrap_or("").trim().to_owned()
}

/// Kconfig's tristate logic: n < m < y.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tri {
    N,
    M,
    Y,
}

impl Tri {
    /// The least value a dependency must have for a request of `value`.
    fn needed(value: &str) -> Tri {
        if value == "m" {
            Tri::M
        } else {
            Tri::Y
        }
    }
}

/// A `depends on` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Sym(String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(String, &'static str, String),
}

impl Expr {
    fn parse(text: &str) -> Option<Expr> {
        let tokens = tokenize(text)?;
        let mut p = Parser { tokens, at: 0 };
        let e = p.or()?;
        (p.at == p.tokens.len()).then_some(e)
    }

    fn eval(&self, c: &DotConfig) -> Tri {
        match self {
            Expr::Sym(s) => sym_value(s, c),
            Expr::Not(e) => match e.eval(c) {
                Tri::N => Tri::Y,
                Tri::M => Tri::M,
                Tri::Y => Tri::N,
            },
            Expr::And(a, b) => a.eval(c).min(b.eval(c)),
            Expr::Or(a, b) => a.eval(c).max(b.eval(c)),
            Expr::Cmp(a, op, b) => {
                let (a, b) = (operand(a, c), operand(b, c));
                let r = match *op {
                    "=" => a == b,
                    "!=" => a != b,
                    _ => match (a.parse::<i64>(), b.parse::<i64>()) {
                        (Ok(x), Ok(y)) => match *op {
                            "<" => x < y,
                            "<=" => x <= y,
                            ">" => x > y,
                            _ => x >= y,
                        },
                        _ => false,
                    },
                };
                if r {
                    Tri::Y
                } else {
                    Tri::N
                }
            }
        }
    }

    /// The smallest terms that keep the expression below `need`.
    fn blame(&self, c: &DotConfig, need: Tri) -> Vec<String> {
        if self.eval(c) >= need {
            return Vec::new();
        }
        match self {
            Expr::Sym(s) if s == "y" || s == "m" || s == "n" => Vec::new(),
            Expr::Sym(s) => vec![format!("{s} {}", c.describe(s))],
            Expr::Not(e) => match e.as_ref() {
                Expr::Sym(s) => vec![format!("{s} {}", c.describe(s))],
                _ => vec![format!("!({}) is false", e.render())],
            },
            Expr::And(a, b) => {
                let mut v = a.blame(c, need);
                v.extend(b.blame(c, need));
                v
            }
            Expr::Or(..) => vec![format!("none of `{}` holds", self.render())],
            Expr::Cmp(a, op, b) => vec![format!(
                "{a}{op}{b} is false ({a} {})",
                if is_symbol(a) && !a.chars().all(|ch| ch.is_ascii_digit()) {
                    c.describe(a)
                } else {
                    "is a constant".into()
                }
            )],
        }
    }

    fn render(&self) -> String {
        match self {
            Expr::Sym(s) => s.clone(),
            Expr::Not(e) => format!("!{}", e.render()),
            Expr::And(a, b) => format!("{} && {}", a.render(), b.render()),
            Expr::Or(a, b) => format!("{} || {}", a.render(), b.render()),
            Expr::Cmp(a, op, b) => format!("{a}{op}{b}"),
        }
    }
}

fn sym_value(s: &str, c: &DotConfig) -> Tri {
    match s {
        "y" => Tri::Y,
        "m" => Tri::M,
        "n" => Tri::N,
        _ => match c.get(s) {
            Some("y") => Tri::Y,
            Some("m") => Tri::M,
            _ => Tri::N,
        },
    }
}

/// A comparison operand: a symbol's value, or a constant (quotes removed).
fn operand(s: &str, c: &DotConfig) -> String {
    if let Some(inner) = s.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        return inner.to_owned();
    }
    match c.get(s) {
        Some(v) => v.trim_matches('"').to_owned(),
        // Kconfig symbols are upper case; anything else is a constant.
        None if s
            .bytes()
            .any(|b| !(b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
            || s.parse::<i64>().is_ok() =>
        {
            s.to_owned()
        }
        None => "n".to_owned(),
    }
}

fn tokenize(text: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        let next = chars.get(i + 1).copied();
        match ch {
            ' ' | '\t' => i += 1,
            '(' | ')' => {
                out.push(ch.to_string());
                i += 1;
            }
            '&' | '|' if next == Some(ch) => {
                out.push(format!("{ch}{ch}"));
                i += 2;
            }
            '!' | '<' | '>' if next == Some('=') => {
                out.push(format!("{ch}="));
                i += 2;
            }
            '!' | '<' | '>' | '=' => {
                out.push(ch.to_string());
                i += 1;
            }
            '"' => {
                let end = chars[i + 1..].iter().position(|&c| c == '"')? + i + 1;
                out.push(chars[i..=end].iter().collect());
                i = end + 1;
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | '-' | '.'))
                {
                    i += 1;
                }
                out.push(chars[start..i].iter().collect());
            }
            // `$(…)` macros and anything else: not an expression we evaluate.
            _ => return None,
        }
    }
    Some(out)
}

struct Parser {
    tokens: Vec<String>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn take(&mut self) -> Option<String> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn or(&mut self) -> Option<Expr> {
        let mut e = self.and()?;
        while self.peek() == Some("||") {
            self.at += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Some(e)
    }

    fn and(&mut self) -> Option<Expr> {
        let mut e = self.unary()?;
        while self.peek() == Some("&&") {
            self.at += 1;
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Some(e)
    }

    fn unary(&mut self) -> Option<Expr> {
        match self.peek()? {
            "!" => {
                self.at += 1;
                Some(Expr::Not(Box::new(self.unary()?)))
            }
            "(" => {
                self.at += 1;
                let e = self.or()?;
                (self.take()? == ")").then_some(e)
            }
            _ => {
                let a = self.take()?;
                if matches!(a.as_str(), ")" | "&&" | "||") {
                    return None;
                }
                let op = match self.peek() {
                    Some("=") => "=",
                    Some("!=") => "!=",
                    Some("<") => "<",
                    Some("<=") => "<=",
                    Some(">") => ">",
                    Some(">=") => ">=",
                    _ => return Some(Expr::Sym(a)),
                };
                self.at += 1;
                let b = self.take()?;
                Some(Expr::Cmp(a, op, b))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KVM_KCONFIG: &str = r#"
# SPDX-License-Identifier: GPL-2.0
menuconfig VIRTUALIZATION
	bool "Virtualization"
	default y

if VIRTUALIZATION

config KVM
	tristate "Kernel-based Virtual Machine (KVM) support"
	depends on HAVE_KVM
	depends on HIGH_RES_TIMERS
	# for TASKSTATS/TASK_DELAY_ACCT:
	depends on NET && MULTIUSER
	select PREEMPT_NOTIFIERS
	help
	  Support hosting fully virtualized guest machines using hardware
	  virtualization extensions. depends on nothing in this text.

	  If unsure, say N.

config KVM_AMD
	tristate "KVM for AMD processors support"
	depends on KVM && (CPU_SUP_AMD || CPU_SUP_HYGON)
	help
	  Provides support for KVM on AMD processors.

endif # VIRTUALIZATION
"#;

    fn cfg(text: &str) -> DotConfig {
        DotConfig::parse(text)
    }

    #[test]
    fn fragments_parse_and_later_ones_win() {
        let a = parse_fragment(
            "kestrel.config",
            "# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S=\"x y\"\nnot a line\nCONFIG_=y\n",
        );
        assert_eq!(a.len(), 3);
        assert_eq!(a[1].value, "n");
        assert_eq!(a[1].origin, "kestrel.config:3");
        assert_eq!(a[1].to_string(), "# CONFIG_B is not set");
        assert_eq!(a[2].value, "\"x y\"");
        let b = parse_fragment("mine.config", "CONFIG_A=m\n");
        let m = merge(&[a, b]);
        assert_eq!(m.len(), 3);
        assert_eq!(m.last().unwrap().to_string(), "CONFIG_A=m");
        assert_eq!(m.last().unwrap().origin, "mine.config:1");
    }

    #[test]
    fn verification_against_a_fake_config() {
        let req = parse_fragment(
            "f",
            "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=m\nCONFIG_E=\"x\"\nCONFIG_F=y\n# CONFIG_G is not set\n",
        );
        let c = cfg("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_D=y\nCONFIG_E=\"y\"\n");
        let unmet: Vec<String> = verify(&req, &c)
            .iter()
            .map(|u| u.requirement.symbol.clone())
            .collect();
        // D=m is met by y without MODULES; G is absent, which is off.
        assert_eq!(unmet, ["B", "C", "E", "F"]);
        let with_modules = cfg("CONFIG_MODULES=y\nCONFIG_D=y\n");
        let unmet = verify(&parse_fragment("f", "CONFIG_D=m\n"), &with_modules);
        assert_eq!(unmet.len(), 1);
        assert_eq!(unmet[0].actual.as_deref(), Some("y"));
        assert!(!c.has_modules() && cfg("CONFIG_X=m\n").has_modules());
    }

    #[test]
    fn an_unmet_dependency_is_named() {
        let mut k = Kconfig::default();
        k.add_file("arch/x86/kvm/Kconfig", KVM_KCONFIG, &["KVM_AMD", "KVM"]);
        let e = k.entry("KVM_AMD").unwrap();
        assert_eq!(e.defined_at, ["arch/x86/kvm/Kconfig:22"]);
        assert_eq!(
            e.depends,
            ["VIRTUALIZATION", "KVM && (CPU_SUP_AMD || CPU_SUP_HYGON)"]
        );
        // Help text is not read as keywords.
        assert_eq!(
            k.entry("KVM").unwrap().depends,
            [
                "VIRTUALIZATION",
                "HAVE_KVM",
                "HIGH_RES_TIMERS",
                "NET && MULTIUSER"
            ]
        );
        let c = cfg("CONFIG_VIRTUALIZATION=y\n# CONFIG_KVM is not set\nCONFIG_CPU_SUP_AMD=y\n");
        let req = parse_fragment("mine.config", "CONFIG_KVM_AMD=y\n");
        let unmet = verify(&req, &c);
        let why = k.explain(&unmet[0], &c);
        assert_eq!(
            why,
            "it is not set: `depends on KVM && (CPU_SUP_AMD || CPU_SUP_HYGON)` is not met (KVM is not set)"
        );
        let c = cfg("CONFIG_NET=y\n");
        let unmet = verify(&parse_fragment("f", "CONFIG_KVM=y\n"), &c);
        let why = k.explain(&unmet[0], &c);
        assert!(
            why.contains("`depends on VIRTUALIZATION` is not met (VIRTUALIZATION is not set)"),
            "{why}"
        );
        assert!(why.contains("(MULTIUSER is not set)"), "{why}");
        assert!(!why.contains("NET is not set"), "{why}");
    }

    #[test]
    fn selects_unknown_symbols_and_negations() {
        let text = "config A\n\tbool\n\tselect B if C\nconfig B\n\tbool \"b\"\nconfig D\n\tbool \"d\"\n\tdepends on !UML && X86_64 \\\n\t\t&& SIZE > 4\n";
        let mut k = Kconfig::default();
        k.add_file("Kconfig", text, &["B", "D"]);
        let c = cfg("CONFIG_A=y\nCONFIG_B=y\nCONFIG_UML=y\nCONFIG_X86_64=y\nCONFIG_SIZE=2\n");
        let unmet = verify(
            &parse_fragment("f", "# CONFIG_B is not set\nCONFIG_D=y\nCONFIG_NOPE=y\n"),
            &c,
        );
        assert_eq!(unmet.len(), 3);
        assert_eq!(
            k.explain(&unmet[0], &c),
            "it =y because it is selected by A if C"
        );
        let why = k.explain(&unmet[1], &c);
        assert!(
            why.contains("UML =y") && why.contains("SIZE>4 is false (SIZE =2)"),
            "{why}"
        );
        assert!(k.explain(&unmet[2], &c).starts_with("no Kconfig file"));
    }

    #[test]
    fn expressions() {
        let c = cfg("CONFIG_A=y\nCONFIG_B=m\nCONFIG_S=\"abc\"\n");
        let eval = |t: &str| Expr::parse(t).unwrap().eval(&c);
        assert_eq!(eval("A && B"), Tri::M);
        assert_eq!(eval("A && !B"), Tri::M);
        assert_eq!(eval("!A || C"), Tri::N);
        assert_eq!(eval("(C || A) && S = \"abc\""), Tri::Y);
        assert_eq!(eval("S != abc"), Tri::N);
        assert!(Expr::parse("A &&").is_none());
        assert!(Expr::parse("$(cc-option,-m64)").is_none());
        assert_eq!(logical_lines("a \\\nb\nc\n")[1], (3, "c".to_owned()));
    }
}
