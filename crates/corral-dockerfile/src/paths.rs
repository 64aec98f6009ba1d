//! Paths.

/// Normalises an absolute path: no `.`, `..`, empty or trailing segments (`..` stops at `/`).
fn clean_absolute(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `path` made absolute against `dir`, normalised.
pub(crate) fn resolve(dir: &str, path: &str) -> String {
    if path.starts_with('/') {
        clean_absolute(path)
    } else {
        clean_absolute(&format!("{dir}/{path}"))
    }
}

/// A COPY destination: absolute, ending in `/` when it names a directory.
pub(crate) fn resolve_dest(dir: &str, dest: &str) -> String {
    let is_dir = dest.ends_with('/')
        || dest == "."
        || dest == ".."
        || dest.ends_with("/.")
        || dest.ends_with("/..");
    let path = resolve(dir, dest);
    if is_dir && path != "/" {
        path + "/"
    } else {
        path
    }
}

/// A COPY source as a normalised path in the build context; `None` if it climbs out.
pub(crate) fn context_path(source: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for segment in source.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    })
}

pub(crate) fn is_url(source: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    ["http://", "https://", "git://", "ssh://", "git@"]
        .iter()
        .any(|prefix| lower.starts_with(prefix))
}

pub(crate) fn is_tar_archive(source: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    [
        ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tbz2", ".tar.xz", ".txz", ".tar.zst",
        ".tzst",
    ]
    .iter()
    .any(|suffix| lower.ends_with(suffix))
}

pub(crate) fn parse_mode(text: &str) -> Option<u32> {
    if text.is_empty() || !text.chars().all(|c| c.is_digit(8)) {
        return None;
    }
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|mode| *mode <= 0o7777)
}
