//! The init's one error type and errno naming.
//!
//! An [`InitError`] is the text of `Status::InitError`: the step that failed
//! and, for a failed system call, the errno's symbolic name (`ENOENT`), so the
//! host sees the same words whatever libc or locale the guest has.

use std::fmt;
use std::io;

/// A failed boot step; its text names the step and the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitError(String);

impl InitError {
    /// A failed system call: `"<step>: <ERRNO>"`.
    pub fn os(step: impl fmt::Display, err: &io::Error) -> InitError {
        InitError(format!("{step}: {}", describe(err)))
    }

    /// Any other failure, described in full by `text`.
    pub fn msg(text: impl Into<String>) -> InitError {
        InitError(text.into())
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `ENOENT` for an OS error, `errno 4242` for an unknown number, the
/// message for an error that did not come from the kernel.
pub fn describe(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(n) => name(n).map_or_else(|| format!("errno {n}"), str::to_string),
        None => err.to_string(),
    }
}

/// The symbolic name of a Linux errno.
pub fn name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::ENOTBLK => "ENOTBLK",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENOMSG => "ENOMSG",
        libc::ENODATA => "ENODATA",
        libc::ENOPKG => "ENOPKG",
        libc::EBADMSG => "EBADMSG",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ELIBBAD => "ELIBBAD",
        libc::EILSEQ => "EILSEQ",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        libc::ECANCELED => "ECANCELED",
        libc::ENOKEY => "ENOKEY",
        libc::EKEYEXPIRED => "EKEYEXPIRED",
        libc::EKEYREVOKED => "EKEYREVOKED",
        libc::EKEYREJECTED => "EKEYREJECTED",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_errnos() {
        assert_eq!(name(libc::ENOENT), Some("ENOENT"));
        assert_eq!(name(libc::ENODEV), Some("ENODEV"));
        assert_eq!(name(libc::EKEYREJECTED), Some("EKEYREJECTED"));
        assert_eq!(name(0), None);
        assert_eq!(name(4242), None);
    }

    #[test]
    fn describes_errors() {
        let enodev = io::Error::from_raw_os_error(libc::ENODEV);
        assert_eq!(describe(&enodev), "ENODEV");
        assert_eq!(describe(&io::Error::from_raw_os_error(4242)), "errno 4242");
        let other = io::Error::other("bad field");
        assert_eq!(describe(&other), "bad field");
    }

    #[test]
    fn formats_steps() {
        let e = InitError::os(
            "mount virtiofs kestrel-root on /kestrel/host",
            &io::Error::from_raw_os_error(libc::ENODEV),
        );
        assert_eq!(
            e.to_string(),
            "mount virtiofs kestrel-root on /kestrel/host: ENODEV"
        );
        assert_eq!(InitError::msg("no such port").to_string(), "no such port");
    }
}
