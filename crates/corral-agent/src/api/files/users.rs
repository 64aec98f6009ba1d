//! User and group names from `/etc/passwd` and `/etc/group`, read directly (no NSS: the
//! static agent must not reach for nscd sockets or plugins).

/// Entries `(name, id)` of a colon-separated database whose third field is the id.
fn entries(file: &str) -> Vec<(String, u32)> {
    // The sandbox's root may have replaced the file: read like any requested path.
    let Ok(text) = super::safe::read_text(std::path::Path::new(file)) else {
        return Vec::new();
    };
    parse(&text)
}

fn parse(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split(':');
            let name = fields.next()?;
            let id = fields.nth(1)?.parse().ok()?;
            (!name.is_empty()).then(|| (name.to_owned(), id))
        })
        .collect()
}

/// The uids or gids of one database, by name and by id.
#[derive(Debug, Default)]
pub(crate) struct Db {
    entries: Vec<(String, u32)>,
}

impl Db {
    pub(crate) fn users() -> Self {
        Self {
            entries: entries("/etc/passwd"),
        }
    }

    pub(crate) fn groups() -> Self {
        Self {
            entries: entries("/etc/group"),
        }
    }

    /// The name of `id`, or the number itself.
    pub(crate) fn name(&self, id: u32) -> String {
        self.entries
            .iter()
            .find(|(_, i)| *i == id)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| id.to_string())
    }

    /// The id of a name or a number.
    pub(crate) fn id(&self, name: &str) -> Option<u32> {
        name.parse().ok().or_else(|| {
            self.entries
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, i)| *i)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd() {
        let db = Db {
            entries: parse(
                "# c\nroot:x:0:0:root:/root:/bin/sh\ndaytona:x:1000:1000::/home/daytona:/bin/bash\nbad\n",
            ),
        };
        assert_eq!(db.name(1000), "daytona");
        assert_eq!(db.name(7), "7");
        assert_eq!(db.id("root"), Some(0));
        assert_eq!(db.id("42"), Some(42));
        assert_eq!(db.id("nobody-here"), None);
    }
}
