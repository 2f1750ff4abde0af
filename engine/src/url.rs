//! What of a URL may be shown: credentials embedded in it (`https://user:token@host/...`) are
//! dropped by [`shown`] and listed by [`credentials`] for redaction. Used by `source` (git URLs)
//! and by the recipe's `data "http"` blocks, so it sits below both.

/// The parts of a `scheme://[userinfo@]host/...` URL: scheme, the byte range of the userinfo
/// with its `@`, the user and the password.
struct UserInfo<'a> {
    scheme: &'a str,
    range: std::ops::Range<usize>,
    user: &'a str,
    password: Option<&'a str>,
}

fn user_info(url: &str) -> Option<UserInfo<'_>> {
    let scheme_end = url.find("://")?;
    let start = scheme_end + 3;
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let at = url[start..authority_end].rfind('@')? + start;
    let info = &url[start..at];
    let (user, password) = match info.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (info, None),
    };
    Some(UserInfo {
        scheme: &url[..scheme_end],
        range: start..at + 1,
        user,
        password,
    })
}

/// Schemes whose user name is an ssh login, never a credential.
fn is_ssh(scheme: &str) -> bool {
    matches!(scheme, "ssh" | "git+ssh" | "ssh+git")
}

/// The URL as it may be shown and hashed: without a password, and over http(s) without the user
/// either (it is often a token).
pub fn shown(url: &str) -> String {
    match user_info(url) {
        Some(info) if is_ssh(info.scheme) && info.password.is_none() => url.to_string(),
        Some(info) if is_ssh(info.scheme) => format!(
            "{}{}@{}",
            &url[..info.range.start],
            info.user,
            &url[info.range.end..]
        ),
        Some(info) => format!("{}{}", &url[..info.range.start], &url[info.range.end..]),
        None => url.to_string(),
    }
}

/// The secrets in a URL, to blank out of anything shown: the password, and a user name that
/// may be a token (not an ssh login; long enough not to be a common word).
pub fn credentials(url: &str) -> Vec<String> {
    let Some(info) = user_info(url) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let whole = &url[info.range.start..info.range.end - 1];
    if let Some(password) = info.password.filter(|p| !p.is_empty()) {
        out.push(whole.to_string());
        out.push(password.to_string());
    }
    if !is_ssh(info.scheme) && (info.password.is_none() || info.user.len() >= 8) {
        out.push(info.user.to_string());
    }
    out.retain(|s| !s.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_dropped_from_shown_urls() {
        let url = "https://deploy:s3cr3t-t0ken@example.org:8443/site.git";
        assert_eq!(shown(url), "https://example.org:8443/site.git");
        assert_eq!(credentials(url), ["deploy:s3cr3t-t0ken", "s3cr3t-t0ken"]);
        let token_as_user = "https://ghp_abcdefghijklmnop@github.com/o/r.git";
        assert_eq!(shown(token_as_user), "https://github.com/o/r.git");
        assert_eq!(credentials(token_as_user), ["ghp_abcdefghijklmnop"]);
        // An ssh login is no secret, and an @ in the path is no user.
        assert_eq!(
            shown("ssh://git@example.org/site.git"),
            "ssh://git@example.org/site.git"
        );
        assert!(credentials("ssh://git@example.org/site.git").is_empty());
        assert_eq!(
            shown("ssh://git:pw@example.org/site.git"),
            "ssh://git@example.org/site.git"
        );
        assert_eq!(
            shown("https://example.org/a@b.git"),
            "https://example.org/a@b.git"
        );
        assert!(credentials("git@example.org:site.git").is_empty());
    }
}
